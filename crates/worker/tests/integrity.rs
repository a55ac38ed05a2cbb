//! The integrity layer on real images made here by the `image` crate's encoders.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Cursor, Read, Write};

use image::{ImageFormat as Fmt, Rgb, RgbImage};
use md5::{Digest, Md5};
use shardprep_worker::integrity::*;

// Counts this thread's live heap bytes, so a test can prove a decode never
// allocated its claimed pixels.
struct Counting;
thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| {
            let n = c.get() + l.size();
            c.set(n);
            let _ = PEAK.try_with(|p| p.set(p.get().max(n)));
        });
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get().saturating_sub(l.size())));
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap growth of this thread while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

/// A picture with structure (gradients and a disc), so encoders work for real.
fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as i64 - w as i64 / 2, y as i64 - h as i64 / 2);
        let inside = dx * dx + dy * dy < (w.min(h) as i64 / 3).pow(2);
        Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            if inside { 200 } else { 30 },
        ])
    })
}

fn encode(img: &RgbImage, fmt: Fmt) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut out, fmt)
        .unwrap();
    out.into_inner()
}

const FORMATS: [Fmt; 5] = [Fmt::Png, Fmt::Jpeg, Fmt::WebP, Fmt::Gif, Fmt::Bmp];

fn cfg_all() -> IntegrityConfig {
    IntegrityConfig {
        check_decode: true,
        hashes: vec![
            "md5_file_hash=md5".parse().unwrap(),
            "sha256_hash=sha256".parse().unwrap(),
            "sha512_hash=sha512".parse().unwrap(),
        ],
        ..IntegrityConfig::default()
    }
}

/// Facts of `bytes` streamed through a check in `chunk`-byte reads.
fn streamed(cfg: &IntegrityConfig, bytes: &[u8], chunk: usize) -> ImageFacts {
    let mut check = ImageCheck::new(cfg, bytes.len() as u64);
    let mut reader = CheckingReader {
        inner: bytes,
        check: &mut check,
    };
    let mut buf = vec![0u8; chunk];
    while reader.read(&mut buf).unwrap() > 0 {}
    check.finish(None)
}

fn reasons(v: &Verdict) -> Vec<&'static str> {
    v.problems.iter().map(|p| p.reason.as_str()).collect()
}

#[test]
fn five_formats_read_decode_and_stream_alike() {
    let img = picture(37, 23);
    let cfg = cfg_all();
    for fmt in FORMATS {
        let bytes = encode(&img, fmt);
        assert_eq!(image_dims(&bytes), Ok((37, 23)), "{fmt:?}");
        assert_eq!(decode_check(&bytes, 1 << 20), Ok((37, 23)), "{fmt:?}");
        let whole = ImageCheck::whole(&cfg, &bytes);
        assert_eq!(whole.header, Ok((37, 23)));
        assert_eq!(whole.decode, Some(Ok((37, 23))));
        assert_eq!(
            whole.digests.md5.unwrap().to_vec(),
            Md5::digest(&bytes).to_vec()
        );
        // Byte-by-byte and odd chunks give the same facts as the whole.
        for chunk in [1, 7, 4096] {
            assert_eq!(
                streamed(&cfg, &bytes, chunk),
                whole,
                "{fmt:?} chunk {chunk}"
            );
        }
        let claims = Claims {
            width: Some(37),
            height: Some(23),
            hashes: vec![
                whole.digests.hex(HashAlgo::Md5),
                whole.digests.hex(HashAlgo::Sha256),
                whole
                    .digests
                    .hex(HashAlgo::Sha512)
                    .map(|h| h.to_uppercase()),
            ],
        };
        let v = judge(&cfg, &whole, Some(&claims));
        assert!(v.problems.is_empty(), "{fmt:?}: {:?}", v.problems);
    }
}

/// A JPEG with `segments` APP1 segments of `len` bytes each between SOI and the rest.
fn jpeg_with_app_segments(img: &RgbImage, segments: usize, len: usize) -> Vec<u8> {
    let plain = encode(img, Fmt::Jpeg);
    let mut out = plain[..2].to_vec();
    for i in 0..segments {
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((len + 2) as u16).to_be_bytes());
        let mut body = b"Exif\0\0".to_vec();
        body.resize(len, (i as u8).wrapping_mul(31) | 1);
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(&plain[2..]);
    out
}

#[test]
fn jpeg_size_behind_big_exif_segments() {
    let img = picture(64, 48);
    let bytes = jpeg_with_app_segments(&img, 3, 65_000);
    // The first chunk is not enough: the answer says how much is.
    match image_dims(&bytes[..4096]) {
        Err(DimsError::NeedMore { have, need }) => {
            assert_eq!(have, 4096);
            assert_eq!(need, 2 + 65_004 + 4);
            let mut more = need;
            loop {
                match image_dims(&bytes[..more]) {
                    Err(DimsError::NeedMore { need, .. }) => {
                        assert!(need > more);
                        more = need;
                    }
                    other => {
                        assert_eq!(other, Ok((64, 48)));
                        break;
                    }
                }
            }
            assert!(
                more > 3 * 65_000,
                "the frame header is behind all three segments"
            );
        }
        other => panic!("expected NeedMore, got {other:?}"),
    }
    let cfg = cfg_all();
    let facts = streamed(&cfg, &bytes, 1000);
    assert_eq!(facts.header, Ok((64, 48)));
    assert_eq!(facts.decode, Some(Ok((64, 48))));
}

#[test]
fn truncated_images_fail_to_decode_with_the_decoders_message() {
    let img = picture(200, 150);
    let cfg = cfg_all();
    for fmt in FORMATS {
        let bytes = encode(&img, fmt);
        let cut = &bytes[..bytes.len() * 2 / 3];
        let facts = ImageCheck::whole(&cfg, cut);
        assert_eq!(
            facts.header,
            Ok((200, 150)),
            "{fmt:?}: the header is intact"
        );
        let v = judge(&cfg, &facts, None);
        assert_eq!(reasons(&v), ["decode_failed"], "{fmt:?}: {:?}", v.problems);
        assert!(
            v.problems[0].detail.contains(&format!(
                "{} decoder:",
                ImageFormat::name(sniff_format(cut).unwrap())
            )),
            "{fmt:?}: {}",
            v.problems[0].detail
        );
    }
}

#[test]
fn truncated_jpeg_with_a_thumbnail_in_its_exif_is_still_found() {
    // The thumbnail brings its own end-of-image marker before the real scan.
    let thumb = encode(&picture(8, 8), Fmt::Jpeg);
    let main = encode(&picture(120, 90), Fmt::Jpeg);
    let mut bytes = main[..2].to_vec();
    bytes.extend_from_slice(&[0xFF, 0xE1]);
    bytes.extend_from_slice(&((thumb.len() + 8) as u16).to_be_bytes());
    bytes.extend_from_slice(b"Exif\0\0");
    bytes.extend_from_slice(&thumb);
    bytes.extend_from_slice(&main[2..]);
    assert_eq!(decode_check(&bytes, 1 << 20), Ok((120, 90)));
    let cut = &bytes[..bytes.len() - 200];
    assert!(matches!(
        decode_check(cut, 1 << 20),
        Err(DecodeError::Failed { format: "jpeg", ref message }) if message.contains("truncated")
    ));
}

#[test]
fn lying_json_is_a_dims_mismatch_and_image_dims_can_win() {
    let bytes = encode(&picture(40, 30), Fmt::Png);
    let cfg = IntegrityConfig {
        dims: DimsSource::Image,
        ..IntegrityConfig::default()
    };
    let facts = ImageCheck::whole(&cfg, &bytes);
    let lie = Claims {
        width: Some(1024),
        height: Some(30),
        ..Claims::default()
    };
    let v = judge(&cfg, &facts, Some(&lie));
    assert_eq!(reasons(&v), ["dims_mismatch"]);
    assert!(
        v.problems[0].detail.contains("1024x30"),
        "{}",
        v.problems[0].detail
    );
    assert!(v.problems[0].detail.contains("40x30"));
    assert_eq!(v.table_dims(&cfg, (1024, 30)), (40, 30));
    assert!(v.keep_row(&cfg), "keep is the default");
    let json_cfg = IntegrityConfig::default();
    assert_eq!(v.table_dims(&json_cfg, (1024, 30)), (1024, 30));
}

#[test]
fn wrong_hash_is_a_hash_mismatch() {
    let bytes = encode(&picture(20, 20), Fmt::Png);
    let cfg = IntegrityConfig {
        hashes: dalle3_hash_fields(),
        ..IntegrityConfig::default()
    };
    let facts = streamed(&cfg, &bytes, 333);
    let good_md5: String = Md5::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let good_sha512 = facts.digests.hex(HashAlgo::Sha512).unwrap();
    let ok = Claims {
        hashes: vec![Some(good_md5.clone()), Some(good_sha512.clone())],
        ..Claims::default()
    };
    assert!(judge(&cfg, &facts, Some(&ok)).problems.is_empty());
    let mut flipped = good_md5.into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    let bad = Claims {
        hashes: vec![
            Some(String::from_utf8(flipped).unwrap()),
            Some("xyz".into()),
        ],
        ..Claims::default()
    };
    let v = judge(&cfg, &facts, Some(&bad));
    assert_eq!(reasons(&v), ["hash_mismatch", "hash_mismatch"]);
    assert!(
        v.problems[0].detail.starts_with("md5_file_hash:"),
        "{}",
        v.problems[0].detail
    );
    assert!(
        v.problems[1].detail.contains("not a 128-digit hex sha512"),
        "{}",
        v.problems[1].detail
    );
    // A JSON without the field claims nothing.
    let none = Claims::default();
    assert!(judge(&cfg, &facts, Some(&none)).problems.is_empty());
    // Claims are read from a real JSON.
    let json = format!(r#"{{"md5_pil_hash":"00","sha512_hash":"{good_sha512}","width":20}}"#);
    assert_eq!(
        hash_claims(json.as_bytes(), &cfg.hashes),
        vec![None, Some(good_sha512)]
    );
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A well-formed PNG whose header claims `w`x`h` RGB pixels (its data is tiny).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn decompression_bomb_is_refused_before_allocating() {
    let bomb = png_claiming(100_000, 100_000);
    assert_eq!(image_dims(&bomb), Ok((100_000, 100_000)));
    let (res, peak) = peak_during(|| decode_check(&bomb, DEFAULT_MAX_PIXELS));
    match res {
        Err(DecodeError::TooManyPixels { what, max_pixels }) => {
            assert!(what.contains("100000x100000"), "{what}");
            assert_eq!(max_pixels, DEFAULT_MAX_PIXELS);
        }
        other => panic!("expected TooManyPixels, got {other:?}"),
    }
    assert!(peak < 4 << 20, "the decode allocated {peak} bytes");
    let cfg = IntegrityConfig {
        check_decode: true,
        ..IntegrityConfig::default()
    };
    let v = judge(&cfg, &ImageCheck::whole(&cfg, &bomb), None);
    assert_eq!(reasons(&v), ["too_many_pixels"]);
    // Under the cap the same kind of file is decoded (and fails on its data).
    let small = png_claiming(64, 64);
    assert!(matches!(
        decode_check(&small, DEFAULT_MAX_PIXELS),
        Err(DecodeError::Failed { format: "png", .. })
    ));
}

#[test]
fn unreadable_headers_are_named() {
    let cfg = IntegrityConfig::default();
    // What the fixture generator writes today: PNG magic, then random bytes.
    let mut fake = b"\x89PNG\r\n\x1a\n".to_vec();
    fake.extend((0..1000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let cases: [(&[u8], &str); 4] = [
        (&fake, "IHDR"),
        (b"just some text, not an image at all", "not a PNG"),
        (b"", "ends after 0 bytes"),
        (
            &encode(&picture(9, 9), Fmt::Png)[..20],
            "ends after 20 bytes",
        ),
    ];
    for (bytes, says) in cases {
        for facts in [ImageCheck::whole(&cfg, bytes), streamed(&cfg, bytes, 5)] {
            let v = judge(&cfg, &facts, Some(&Claims::default()));
            assert_eq!(reasons(&v), ["unreadable_image_header"]);
            assert!(
                v.problems[0].detail.contains(says),
                "{}",
                v.problems[0].detail
            );
        }
    }
}

#[test]
fn large_members_are_decoded_from_their_written_file() {
    // Noise does not compress: the PNG is larger than what is held in memory.
    let mut seed = 7u64;
    let img = RgbImage::from_fn(1400, 1100, |_, _| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let b = (seed >> 33).to_le_bytes();
        Rgb([b[0], b[1], b[2]])
    });
    let bytes = encode(&img, Fmt::Png);
    assert!(
        bytes.len() as u64 > DECODE_HOLD_MAX,
        "{} bytes",
        bytes.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg_all();
    let cut = &bytes[..bytes.len() - 100_000];
    for (data, ok) in [(&bytes[..], true), (cut, false)] {
        let path = dir.path().join("big.png");
        let mut file = std::fs::File::create(&path).unwrap();
        let mut check = ImageCheck::new(&cfg, data.len() as u64);
        let mut reader = CheckingReader {
            inner: data,
            check: &mut check,
        };
        // As the shard pass streams a member: through a 1 MiB buffer into its file.
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).unwrap();
        }
        drop(file);
        let facts = check.finish(Some(&path));
        assert_eq!(facts.header, Ok((1400, 1100)));
        assert_eq!(
            facts.digests.md5.unwrap().to_vec(),
            Md5::digest(data).to_vec()
        );
        match (&facts.decode, ok) {
            (Some(Ok((1400, 1100))), true) => {}
            (Some(Err(DecodeError::Failed { format: "png", .. })), false) => {}
            other => panic!("unexpected decode {other:?}"),
        }
    }
    // Not written and too large to hold: not decoded, and not called bad.
    let facts = streamed(&cfg, &bytes, 1 << 20);
    assert_eq!(facts.decode, None);
    assert!(judge(&cfg, &facts, None).problems.is_empty());
}

#[test]
fn ledger_pairs_in_either_order_and_keeps_json_order() {
    let cfg = IntegrityConfig {
        on_bad_image: OnBadImage::Skip,
        ..IntegrityConfig::default()
    };
    assert!(cfg.defers_rows());
    let good = ImageCheck::whole(&cfg, &encode(&picture(10, 10), Fmt::Png));
    let claims = |w| Claims {
        width: Some(w),
        height: Some(10),
        ..Claims::default()
    };
    let mut l: Ledger<&str> = Ledger::new(cfg.clone());
    // Image first, then its honest JSON: released at once.
    l.image("a.png", good.clone());
    l.json("a.png", claims(10), "row a");
    // JSON first: held until its image comes; the row after it waits too.
    l.json("b.png", claims(99), "row b");
    l.json("c.png", claims(10), "row c");
    l.image("c.png", good.clone());
    let first = l.pop_ready();
    assert!(
        matches!(first, Some(Resolved::Row { row: "row a", verdict: Some(ref v), .. }) if !v.is_bad())
    );
    assert!(l.pop_ready().is_none(), "row c waits behind row b");
    l.image("b.png", good.clone());
    match l.pop_ready() {
        Some(Resolved::Row {
            row: "row b",
            verdict: Some(v),
            image,
        }) => {
            assert_eq!(image, "b.png");
            assert_eq!(reasons(&v), ["dims_mismatch"]);
            assert!(!v.keep_row(&cfg));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        l.pop_ready(),
        Some(Resolved::Row { row: "row c", .. })
    ));
    // A JSON whose image never comes, and an image no JSON names.
    l.json("gone.png", claims(10), "row gone");
    l.image("orphan.png", ImageCheck::whole(&cfg, b"garbage"));
    assert_eq!(l.waiting(), 1);
    l.finish();
    assert!(matches!(
        l.pop_ready(),
        Some(Resolved::Row {
            row: "row gone",
            verdict: None,
            ..
        })
    ));
    match l.pop_ready() {
        Some(Resolved::LoneImage { image, verdict }) => {
            assert_eq!(image, "orphan.png");
            let mut tally = IntegrityTally::default();
            tally.record(&image, &verdict);
            assert_eq!(tally.by_reason.get("unreadable_image_header"), Some(&1));
            assert_eq!(tally.listed[0].member, "orphan.png");
        }
        other => panic!("{other:?}"),
    }
    assert!(l.pop_ready().is_none());
}

#[test]
fn ledger_holds_a_bounded_number_of_rows() {
    let cfg = IntegrityConfig::default();
    let mut l: Ledger<usize> = Ledger::new(cfg);
    // A JSON whose image never comes must not hold back a whole shard's rows.
    for i in 0..MAX_WAITING + 10 {
        l.json(&format!("{i}.png"), Claims::default(), i);
        assert!(l.waiting() <= MAX_WAITING);
    }
    let mut released = Vec::new();
    while let Some(Resolved::Row { row, .. }) = l.pop_ready() {
        released.push(row);
    }
    assert_eq!(released, (0..10).collect::<Vec<_>>());
    // Their images arrive late: judged on their own, not lost.
    l.image("0.png", ImageCheck::whole(l.config(), b"garbage"));
    l.finish();
    let lone = std::iter::from_fn(|| l.pop_ready())
        .filter(|r| matches!(r, Resolved::LoneImage { .. }))
        .count();
    assert_eq!(lone, 1);
}

#[test]
fn ledger_judges_each_image_with_its_own_facts_in_any_order() {
    let cfg = IntegrityConfig::default();
    let good = ImageCheck::whole(&cfg, &encode(&picture(10, 10), Fmt::Png));
    let broken = ImageCheck::whole(&cfg, b"garbage");
    let claims = |w| Claims {
        width: Some(w),
        height: Some(10),
        ..Claims::default()
    };
    let mut l: Ledger<&str> = Ledger::new(cfg);
    // Images first; a claimed image's place is taken by the next one.
    l.image("a.png", good.clone());
    l.image("b.png", broken);
    l.json("a.png", claims(10), "a");
    l.image("c.png", good.clone());
    l.json("b.png", claims(10), "b");
    l.json("c.png", claims(99), "c");
    // JSONs first, two naming one image, and a JSON whose image comes later.
    l.json("d.png", claims(10), "d1");
    l.json("d.png", claims(99), "d2");
    l.json("e.png", claims(10), "e");
    l.image("d.png", good.clone());
    l.image("e.png", good.clone());
    // A second copy of an image already claimed: judged alone at the end.
    l.image("a.png", good);
    l.finish();
    let got: Vec<(String, Vec<&str>)> = std::iter::from_fn(|| l.pop_ready())
        .map(|r| match r {
            Resolved::Row { row, verdict, .. } => {
                let v = verdict.expect("every row's image came");
                (row.to_string(), reasons(&v))
            }
            Resolved::LoneImage { image, verdict } => (format!("lone {image}"), reasons(&verdict)),
        })
        .collect();
    let want: Vec<(String, Vec<&str>)> = [
        ("a", vec![]),
        ("b", vec!["unreadable_image_header"]),
        ("c", vec!["dims_mismatch"]),
        ("d1", vec![]),
        ("d2", vec!["dims_mismatch"]),
        ("e", vec![]),
        ("lone a.png", vec![]),
    ]
    .into_iter()
    .map(|(r, v)| (r.to_string(), v))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn flags_parse_and_name_their_fault() {
    assert_eq!("image".parse::<DimsSource>(), Ok(DimsSource::Image));
    assert!(
        "exif"
            .parse::<DimsSource>()
            .unwrap_err()
            .contains("json or image")
    );
    assert_eq!("skip".parse::<OnBadImage>(), Ok(OnBadImage::Skip));
    assert!(
        "drop"
            .parse::<OnBadImage>()
            .unwrap_err()
            .contains("keep or skip")
    );
    let specs = preset_hash_fields("dalle3").unwrap();
    let names: Vec<String> = specs.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["md5_file_hash=md5", "sha512_hash=sha512"]);
    assert!(preset_hash_fields("laion").is_none());
    assert_eq!(
        Reason::ALL.map(Reason::as_str),
        [
            "dims_mismatch",
            "unreadable_image_header",
            "decode_failed",
            "too_many_pixels",
            "hash_mismatch"
        ]
    );
}

/// A photo-like picture: smooth shapes plus grain, so it compresses like one.
fn photo(w: u32, h: u32, grain: u32) -> RgbImage {
    let base = picture(w, h);
    let mut seed = 99u64;
    RgbImage::from_fn(w, h, |x, y| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let n = ((seed >> 40) % (2 * grain as u64 + 1)) as i32 - grain as i32;
        let p = base.get_pixel(x, y).0;
        Rgb(p.map(|c| (c as i32 + n).clamp(0, 255) as u8))
    })
}

fn jpeg_quality(img: &RgbImage, q: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q)
        .encode_image(img)
        .unwrap();
    out
}

/// Seconds per call of `f`, best of 3 runs of `n` calls.
fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Costs on one core (bench/integrity.sh runs it in release mode).
#[test]
#[ignore = "benchmark: bench/integrity.sh"]
fn bench_integrity_costs() {
    let default_cfg = IntegrityConfig::default();
    let small_png = encode(&photo(256, 256, 8), Fmt::Png);
    let exif_jpeg = jpeg_with_app_segments(&picture(1024, 1024), 1, 60_000);
    for (name, bytes) in [("png", &small_png), ("jpeg+60KB exif", &exif_jpeg)] {
        let s = per_call(200_000, || {
            std::hint::black_box(ImageCheck::whole(&default_cfg, std::hint::black_box(bytes)));
        });
        println!("header dims, {name} held whole: {:.0} ns/image", s * 1e9);
    }
    let s = per_call(20_000, || {
        let mut c = ImageCheck::new(&default_cfg, exif_jpeg.len() as u64);
        for chunk in exif_jpeg.chunks(1 << 20) {
            c.update(chunk);
        }
        std::hint::black_box(c.finish(None));
    });
    println!(
        "header dims, jpeg+60KB exif streamed: {:.0} ns/image",
        s * 1e9
    );

    let buf: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    for algo in [HashAlgo::Md5, HashAlgo::Sha256, HashAlgo::Sha512] {
        let s = per_call(1, || {
            let mut h = ImageHasher::new([algo]);
            for chunk in buf.chunks(1 << 20) {
                h.update(chunk);
            }
            std::hint::black_box(h.finish());
        });
        println!(
            "hash {}: {:.0} MB/s",
            algo.name(),
            buf.len() as f64 / s / 1e6
        );
    }
    let dalle3 = IntegrityConfig {
        hashes: dalle3_hash_fields(),
        ..IntegrityConfig::default()
    };
    let s = per_call(1, || {
        let mut h = ImageHasher::for_specs(&dalle3.hashes);
        for chunk in buf.chunks(1 << 20) {
            h.update(chunk);
        }
        std::hint::black_box(h.finish());
    });
    println!(
        "hash dalle3 preset (md5+sha512): {:.0} MB/s",
        buf.len() as f64 / s / 1e6
    );

    let jpeg = jpeg_quality(&photo(1792, 1024, 24), 92);
    let png = encode(&photo(1024, 1024, 3), Fmt::Png);
    for (name, bytes, dims) in [
        ("jpeg 1792x1024", &jpeg, (1792, 1024)),
        ("png 1024x1024", &png, (1024, 1024)),
    ] {
        let ((), peak) =
            peak_during(|| assert_eq!(decode_check(bytes, DEFAULT_MAX_PIXELS), Ok(dims)));
        let s = per_call(10, || {
            std::hint::black_box(decode_check(bytes, DEFAULT_MAX_PIXELS).unwrap());
        });
        println!(
            "decode {name}, {:.2} MiB file: {:.1} images/s, {:.1} MB/s of file, peak heap {:.1} MiB",
            bytes.len() as f64 / (1 << 20) as f64,
            1.0 / s,
            bytes.len() as f64 / s / 1e6,
            peak as f64 / (1 << 20) as f64
        );
    }
}

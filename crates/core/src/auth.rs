//! The shared secret that guards every RPC.

use std::path::Path;

use crate::CoreError;

/// Metadata key carrying `Bearer <token>` on every request.
pub const AUTH_HEADER: &str = "authorization";

/// A fresh random token: 32 bytes as hex.
pub fn generate_token() -> Result<String, CoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| CoreError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random 64-bit number (job and lease ids); 0 if the OS has no randomness.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Reads a token from the first line of a file (surrounding whitespace ignored).
pub fn read_token_file(path: &Path) -> Result<String, CoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| CoreError::TokenFile {
        path: path.display().to_string(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(CoreError::EmptyToken {
            path: path.display().to_string(),
        });
    }
    Ok(token)
}

/// The metadata value a client sends for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Compares a presented `authorization` value with the expected token in
/// time that depends only on the lengths, not on where they differ.
pub fn check_bearer(presented: &[u8], token: &str) -> bool {
    let expected = bearer(token);
    constant_time_eq(presented, expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the optimiser from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let t = generate_token().unwrap();
        assert_eq!(t.len(), 64);
        assert!(check_bearer(bearer(&t).as_bytes(), &t));
        assert!(!check_bearer(b"Bearer nope", &t));
        assert!(!check_bearer(b"", &t));
        assert_ne!(generate_token().unwrap(), t);
    }
}

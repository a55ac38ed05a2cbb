"""Tests of the Kubernetes manifests in k8s/.

    python -m pytest k8s/

Two kinds of tests:

* static checks of the rendered `kubectl kustomize k8s/` output: security
  contexts, Job semantics, Service/NetworkPolicy wiring, resources, and that
  every flag and SHARDPREP_* variable the manifests pass is in
  docs/cli-contract.md;
* the manifests run as local processes: the coordinator and worker containers'
  exact args and env (Secret and ConfigMap references resolved from the
  rendered output, volumes mapped to temp dirs, the Service name mapped to
  127.0.0.1 and a free port) with the built binary. Loopback only.

Needs: kubectl (offline `kubectl kustomize`), pyyaml, pytest; grpcio and
grpcio-health-checking for the health probe test (skipped without them);
the release binary for the process tests: $SHARDPREP_BIN, default
target/release/shardprep (skipped when missing, a failure when CI is set).
`pip install -r k8s/requirements.txt` installs the Python side.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parent
ROOT = K8S.parent
# Another copy of the manifests to test (e.g. an overlay's files): SHARDPREP_K8S_DIR.
MANIFESTS = Path(os.environ.get("SHARDPREP_K8S_DIR", K8S))
CONTRACT = ROOT / "docs" / "cli-contract.md"
DOCKERFILE = ROOT / "Dockerfile"

NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
UID = 65532
GRPC_PORT = 50051
# The coordinator's /metrics port (Prometheus text format, no token).
METRICS_PORT = 9090
# What the container image runs (Dockerfile ENTRYPOINT).
IMAGE_ENTRYPOINT = "/shardprep"

# Upper bounds for one local job on a few tiny shards.
JOB_TIMEOUT_S = 60
READY_TIMEOUT_S = 20


# --------------------------------------------------------------------------
# Rendering and lookup


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> list[dict]:
    """The resources of `kubectl kustomize` on a copy of k8s/ with a test token."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render k8s/ (kubectl kustomize)")
    copy = tmp_path_factory.mktemp("k8s")
    for f in MANIFESTS.glob("*.yaml"):
        shutil.copy(f, copy / f.name)
    # The real k8s/token is never read: a fresh token for the tests.
    (copy / "token").write_text(f"test-{secrets.token_hex(16)}\n")
    out = subprocess.run(
        ["kubectl", "kustomize", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"kubectl kustomize failed:\n{out.stderr}"
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs, "kubectl kustomize rendered nothing"
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        d
        for d in docs
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def job_by_component(docs: list[dict], component: str) -> dict:
    jobs = [
        j
        for j in find(docs, "Job")
        if j["spec"]["template"]["metadata"].get("labels", {}).get(COMPONENT_LABEL)
        == component
    ]
    assert len(jobs) == 1, f"expected one Job with pods of component {component}, found {len(jobs)}"
    return jobs[0]


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def main_container(job: dict) -> dict:
    containers = pod_spec(job)["containers"]
    assert len(containers) == 1, "one shardprep container per pod"
    return containers[0]


def all_containers(job: dict) -> list[dict]:
    spec = pod_spec(job)
    return spec.get("initContainers", []) + spec["containers"]


def contract_text() -> str:
    assert CONTRACT.exists(), f"{CONTRACT} is missing"
    return CONTRACT.read_text()


def contract_env_vars() -> set[str]:
    return set(re.findall(r"\bSHARDPREP_[A-Z_]+[A-Z]\b", contract_text()))


def contract_flags() -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", contract_text()))


def parse_quantity(q: str | int) -> float:
    """Kubernetes quantity (128Mi, 1G, 500m, 2) as a number of base units."""
    units = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
        "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3, "": 1,
    }
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m and m.group(2) in units, f"bad quantity {q!r}"
    return float(m.group(1)) * units[m.group(2)]


# --------------------------------------------------------------------------
# Static checks


def test_expected_resources(rendered):
    one(rendered, "Service", "shardprep-coordinator")
    one(rendered, "PersistentVolumeClaim", "shardprep-shards")
    one(rendered, "PersistentVolumeClaim", "shardprep-out")
    one(rendered, "Secret", "shardprep-token")
    assert find(rendered, "NetworkPolicy"), "no NetworkPolicy"
    job_by_component(rendered, "coordinator")
    job_by_component(rendered, "worker")


def test_every_resource_is_labelled(rendered):
    for d in rendered:
        labels = d["metadata"].get("labels", {})
        assert labels.get(NAME_LABEL) == "shardprep", f"{d['kind']}/{d['metadata']['name']} lacks {NAME_LABEL}"
    for component in ("coordinator", "worker"):
        job = job_by_component(rendered, component)
        assert job["metadata"]["labels"][COMPONENT_LABEL] == component
        pod_labels = job["spec"]["template"]["metadata"]["labels"]
        assert pod_labels[NAME_LABEL] == "shardprep"


@pytest.mark.parametrize("component", ["coordinator", "worker"])
def test_security_context(rendered, component):
    job = job_by_component(rendered, component)
    spec = pod_spec(job)
    pod_sc = spec.get("securityContext", {})
    assert spec.get("automountServiceAccountToken") is False
    assert spec.get("enableServiceLinks") is False, "Service env vars would leak SHARDPREP_COORDINATOR_* into the pod"
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for c in all_containers(job):
        sc = c.get("securityContext", {})

        def effective(key):
            return sc.get(key, pod_sc.get(key))

        where = f"{component}/{c['name']}"
        assert effective("runAsNonRoot") is True, where
        assert effective("runAsUser") == UID, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert not sc.get("privileged", False), where
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
        assert not sc.get("capabilities", {}).get("add"), where
        assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", where
        # A read-only root needs a writable /tmp.
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: no writable /tmp"


def test_dockerfile_matches_manifests(rendered):
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage build expected"
    assert re.search(r"cargo build --release --locked", text)
    entry = re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.M)
    assert entry and json.loads(entry[-1]) == [IMAGE_ENTRYPOINT]
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] == str(UID)
    for component in ("coordinator", "worker"):
        c = main_container(job_by_component(rendered, component))
        # The image's ENTRYPOINT runs the binary; the manifests pass args only.
        assert c.get("command") in (None, [IMAGE_ENTRYPOINT]), c.get("command")


def test_worker_job_semantics(rendered):
    job = job_by_component(rendered, "worker")
    spec = job["spec"]
    parallelism = spec.get("parallelism")
    assert isinstance(parallelism, int) and parallelism >= 1
    # Work-queue Job: completions unset (done when any worker succeeded and all
    # stopped) or equal to parallelism.
    assert spec.get("completions") in (None, parallelism)
    assert spec.get("completionMode", "NonIndexed") == "NonIndexed"
    backoff = spec.get("backoffLimit")
    assert isinstance(backoff, int) and backoff >= parallelism, "backoffLimit is shared by all workers"
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    args = main_container(job)["args"]
    assert args[0] == "worker"


def test_coordinator_job_semantics(rendered):
    job = job_by_component(rendered, "coordinator")
    spec = job["spec"]
    assert spec.get("parallelism", 1) == 1 and spec.get("completions", 1) == 1
    assert pod_spec(job)["restartPolicy"] == "OnFailure"
    assert 1 <= spec.get("backoffLimit", 6) <= 10
    c = main_container(job)
    assert c["args"][0] == "coordinator"
    assert setting(c["args"], {}, "listen") == f"0.0.0.0:{GRPC_PORT}"
    ports = {p["containerPort"] for p in c.get("ports", [])}
    assert GRPC_PORT in ports
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == GRPC_PORT, probe
    # A liveness probe that kills the coordinator before it has come up would
    # loop forever on a big input: a startup probe or an initial delay covers it.
    assert "startupProbe" in c or c["livenessProbe"].get("initialDelaySeconds", 0) >= 30


def test_service_reaches_coordinator_only(rendered):
    svc = one(rendered, "Service", "shardprep-coordinator")
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    selector = svc["spec"]["selector"]
    coord = job_by_component(rendered, "coordinator")
    worker = job_by_component(rendered, "worker")
    coord_labels = coord["spec"]["template"]["metadata"]["labels"]
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= coord_labels.items()
    assert not selector.items() <= worker_labels.items()
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {"grpc", "metrics"}, ports
    c = main_container(coord)
    for name, expected in (("grpc", GRPC_PORT), ("metrics", METRICS_PORT)):
        port = ports[name]
        assert port["port"] == expected, name
        target = port.get("targetPort", port["port"])
        if isinstance(target, str):
            target = {p.get("name"): p["containerPort"] for p in c["ports"]}[target]
        assert target == expected, name


def test_worker_uses_service_url(rendered):
    c = main_container(job_by_component(rendered, "worker"))
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    url = setting(c["args"], env, "coordinator")
    assert url == f"http://shardprep-coordinator:{GRPC_PORT}"


def test_network_policy_admits_only_workers(rendered):
    coord_labels = job_by_component(rendered, "coordinator")["spec"]["template"]["metadata"]["labels"]
    worker_labels = job_by_component(rendered, "worker")["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in find(rendered, "NetworkPolicy")
        if p["spec"]["podSelector"].get("matchLabels", {}).items() <= coord_labels.items()
        and not p["spec"]["podSelector"].get("matchExpressions")
    ]
    assert policies, "no NetworkPolicy selects the coordinator pods"
    for p in policies:
        assert "Ingress" in p["spec"]["policyTypes"]
        rules = p["spec"].get("ingress", [])
        assert rules, "the coordinator must admit the workers"
        grpc_rules = 0
        for rule in rules:
            assert rule.get("from"), "an ingress rule without `from` admits everybody"
            ports = [(q.get("protocol", "TCP"), q["port"]) for q in rule.get("ports", [])]
            if ports == [("TCP", METRICS_PORT)]:
                check_metrics_peers(rule["from"], worker_labels, coord_labels)
                continue
            grpc_rules += 1
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"peer {peer} admits more than worker pods"
                sel = peer["podSelector"].get("matchLabels", {})
                assert sel and sel.items() <= worker_labels.items()
                assert not sel.items() <= coord_labels.items()
            assert ports == [("TCP", GRPC_PORT)], f"a rule opens {ports}: only gRPC (workers) and metrics"
        assert grpc_rules, "no rule admits the workers to the gRPC port"


def check_metrics_peers(peers: list[dict], worker_labels: dict, coord_labels: dict) -> None:
    """The metrics port is open to Prometheus only: each peer selects pods by
    label (in a namespace picked by label), none is an IP block or everybody."""
    for peer in peers:
        assert set(peer) <= {"podSelector", "namespaceSelector"}, f"metrics peer {peer}: selectors only"
        sel = peer.get("podSelector", {}).get("matchLabels", {})
        assert sel, f"metrics peer {peer} admits every pod"
        assert not sel.items() <= worker_labels.items() and not sel.items() <= coord_labels.items()
        if "namespaceSelector" in peer:
            assert peer["namespaceSelector"].get("matchLabels"), f"metrics peer {peer}: every namespace"


def test_metrics_are_scrapeable(rendered):
    """The coordinator serves /metrics on the port the pod and the Service
    announce to Prometheus (prometheus.io/* annotations)."""
    coord = job_by_component(rendered, "coordinator")
    c = main_container(coord)
    ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
    assert ports.get("metrics") == METRICS_PORT, ports
    env = effective_env_names(c, rendered)
    listen = setting(c["args"], env, "metrics-listen")
    assert listen == f"0.0.0.0:{METRICS_PORT}", listen
    svc = one(rendered, "Service", "shardprep-coordinator")
    for where, meta in (("pod", coord["spec"]["template"]["metadata"]), ("Service", svc["metadata"])):
        ann = meta.get("annotations", {})
        assert ann.get("prometheus.io/scrape") == "true", where
        assert ann.get("prometheus.io/port") == str(METRICS_PORT), where
        assert ann.get("prometheus.io/path", "/metrics") == "/metrics", where


def test_resources(rendered):
    mi = 2**20
    limits = {"worker": (128 * mi, 256 * mi), "coordinator": (128 * mi, 256 * mi)}
    for component, (req_expected, limit_expected) in limits.items():
        c = main_container(job_by_component(rendered, component))
        res = c["resources"]
        req = parse_quantity(res["requests"]["memory"])
        lim = parse_quantity(res["limits"]["memory"])
        assert req == req_expected and lim == limit_expected, component
        assert parse_quantity(res["requests"]["cpu"]) > 0
        for kind in res.get("limits", {}):
            if kind in res.get("requests", {}):
                assert parse_quantity(res["requests"][kind]) <= parse_quantity(res["limits"][kind])


def test_shared_storage_at_same_paths(rendered):
    """Workers get input/output paths from the coordinator: same claims at same paths."""

    def claims_by_path(job):
        vols = {v["name"]: v for v in pod_spec(job)["volumes"]}
        out = {}
        for m in main_container(job)["volumeMounts"]:
            pvc = vols[m["name"]].get("persistentVolumeClaim")
            if pvc:
                out[m["mountPath"]] = (pvc["claimName"], bool(m.get("readOnly")))
        return out

    coord = job_by_component(rendered, "coordinator")
    worker = job_by_component(rendered, "worker")
    assert claims_by_path(coord) == claims_by_path(worker)
    mounts = claims_by_path(coord)
    c = main_container(coord)
    env = effective_env_names(c, rendered)
    for flag, writable in (("input", False), ("output", True)):
        path = setting(c["args"], env, flag)
        assert path, f"coordinator has no --{flag}"
        under = [mp for mp in mounts if path == mp or path.startswith(mp.rstrip("/") + "/")]
        assert under, f"--{flag} {path} is not on a shared volume"
        claim, read_only = mounts[under[0]]
        if writable:
            assert not read_only, f"--{flag} {path} is mounted read-only"
        pvc = one(rendered, "PersistentVolumeClaim", claim)
        assert "ReadWriteMany" in pvc["spec"]["accessModes"], claim


def test_token_comes_from_secret(rendered):
    secret = one(rendered, "Secret", "shardprep-token")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert token.strip(), "empty token"
    for component in ("coordinator", "worker"):
        job = job_by_component(rendered, component)
        c = main_container(job)
        env = {e["name"]: e for e in c.get("env", [])}
        if "SHARDPREP_TOKEN" in env:
            ref = env["SHARDPREP_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "shardprep-token"
            continue
        path = env["SHARDPREP_TOKEN_FILE"]["value"]
        vols = {v["name"]: v for v in pod_spec(job)["volumes"]}
        mount = next(
            m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")
        )
        assert vols[mount["name"]]["secret"]["secretName"] == "shardprep-token"
        assert mount.get("readOnly") is True


def test_settings_are_in_cli_contract(rendered):
    """Every flag and SHARDPREP_* variable passed is one the CLI contract documents."""
    known_env = contract_env_vars()
    known_flags = contract_flags()
    assert "SHARDPREP_TOKEN_FILE" in known_env and "--listen" in known_flags  # the parse works
    text = contract_text()
    for component in ("coordinator", "worker"):
        c = main_container(job_by_component(rendered, component))
        assert f"shardprep {c['args'][0]}" in text, f"subcommand {c['args'][0]} not in the contract"
        for a in c["args"][1:]:
            if a.startswith("--"):
                assert a.split("=")[0] in known_flags, f"{component}: flag {a} not in the contract"
        for name in effective_env_names(c, rendered):
            if name == "RUST_LOG":
                continue
            assert name in known_env, f"{component}: {name} not in the contract"
            assert name.startswith("SHARDPREP_")


# --------------------------------------------------------------------------
# Turning a rendered pod into a local process


def effective_env_names(container: dict, docs: list[dict]) -> dict[str, str | None]:
    """Names of the env vars a container gets (values where literal)."""
    env: dict[str, str | None] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            cm = one(docs, "ConfigMap", src["configMapRef"]["name"])
            env.update(cm.get("data", {}))
        elif "secretRef" in src:
            s = one(docs, "Secret", src["secretRef"]["name"])
            env.update({k: None for k in s.get("data", {})})
    for e in container.get("env", []):
        env[e["name"]] = e.get("value")
    return env


def setting(args: list[str], env: dict, flag: str) -> str | None:
    """A flag's value from args (`--f v` or `--f=v`), else its SHARDPREP_ variable."""
    for i, a in enumerate(args):
        if a == f"--{flag}" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(f"--{flag}="):
            return a.split("=", 1)[1]
    return env.get("SHARDPREP_" + flag.upper().replace("-", "_"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shardprep_bin() -> Path:
    env = os.environ.get("SHARDPREP_BIN")
    if env:
        path = Path(env)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        path = target / "release" / "shardprep"
    if not path.is_file():
        msg = f"shardprep binary not found at {path} (cargo build --release, or set SHARDPREP_BIN)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path.resolve()


@dataclass
class Cluster:
    """Local stand-ins for the cluster's storage and network."""

    docs: list[dict]
    root: Path
    bin: Path
    # claim name -> host dir (shared by every pod, like ReadWriteMany storage)
    claims: dict[str, Path] = field(default_factory=dict)
    # "host:port" as pods write it -> "127.0.0.1:port" on this machine
    addresses: dict[str, str] = field(default_factory=dict)
    procs: list = field(default_factory=list)

    def claim_dir(self, name: str) -> Path:
        if name not in self.claims:
            d = self.root / "claims" / name
            d.mkdir(parents=True)
            self.claims[name] = d
        return self.claims[name]

    def map_services(self) -> None:
        """Each Service port, and the port its pods listen on, get one loopback port."""
        for svc in find(self.docs, "Service"):
            name = svc["metadata"]["name"]
            ns = svc["metadata"].get("namespace", "default")
            for p in svc["spec"]["ports"]:
                local = f"127.0.0.1:{free_port()}"
                for host in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
                    self.addresses[f"{host}:{p['port']}"] = local
                target = self.container_port(svc, p)
                for host in ("0.0.0.0", "[::]", ""):
                    self.addresses[f"{host}:{target}"] = local

    def container_port(self, svc: dict, port: dict) -> int:
        target = port.get("targetPort", port["port"])
        if isinstance(target, int):
            return target
        for job in find(self.docs, "Job"):
            labels = job["spec"]["template"]["metadata"].get("labels", {})
            if svc["spec"]["selector"].items() <= labels.items():
                for c in pod_spec(job)["containers"]:
                    for p in c.get("ports", []):
                        if p.get("name") == target:
                            return p["containerPort"]
        raise AssertionError(f"Service port {port} targets no container port")

    def pod(self, component: str, name: str) -> "LocalPod":
        return LocalPod(self, job_by_component(self.docs, component), name)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class LocalPod:
    """One pod of a Job as a local process: same args and env, volumes mapped."""

    def __init__(self, cluster: Cluster, job: dict, name: str):
        self.cluster = cluster
        self.name = name
        self.dir = cluster.root / "pods" / name
        self.dir.mkdir(parents=True)
        # The pod's working directory stands in for its read-only root: it
        # must stay empty.
        self.cwd = self.dir / "root"
        self.cwd.mkdir()
        spec = pod_spec(job)
        c = main_container(job)
        self.mounts = self._mount(spec, c)
        self.env = self._env(c)
        command = c.get("command") or [IMAGE_ENTRYPOINT]
        assert command[0] == IMAGE_ENTRYPOINT, command
        args = [self._expand(a) for a in command[1:] + c.get("args", [])]
        self.argv = [str(cluster.bin)] + [self.rewrite(a) for a in args]
        self.env = {k: self.rewrite(v) for k, v in self.env.items()}
        self.proc: subprocess.Popen | None = None

    def _mount(self, spec: dict, c: dict) -> list[tuple[str, Path]]:
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = []
        for m in c.get("volumeMounts", []):
            v = vols[m["name"]]
            if "persistentVolumeClaim" in v:
                host = self.cluster.claim_dir(v["persistentVolumeClaim"]["claimName"])
            elif "emptyDir" in v:
                host = self.dir / "volumes" / m["name"]
                host.mkdir(parents=True)
            elif "secret" in v:
                host = self.dir / "volumes" / m["name"]
                host.mkdir(parents=True)
                s = one(self.cluster.docs, "Secret", v["secret"]["secretName"])
                items = v["secret"].get("items") or [{"key": k, "path": k} for k in s["data"]]
                for it in items:
                    (host / it["path"]).write_bytes(base64.b64decode(s["data"][it["key"]]))
            elif "configMap" in v:
                host = self.dir / "volumes" / m["name"]
                host.mkdir(parents=True)
                cm = one(self.cluster.docs, "ConfigMap", v["configMap"]["name"])
                for k, val in cm.get("data", {}).items():
                    (host / k).write_text(val)
            else:
                raise AssertionError(f"no local stand-in for volume {v}")
            if m.get("subPath"):
                host = host / m["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mounts.append((m["mountPath"].rstrip("/") or "/", host))
        # Longest mount path first, so /out/x wins over /out.
        return sorted(mounts, key=lambda t: -len(t[0]))

    def _env(self, c: dict) -> dict[str, str]:
        docs = self.cluster.docs
        env: dict[str, str] = {}
        for src in c.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = one(docs, "ConfigMap", src["configMapRef"]["name"]).get("data", {})
                env.update({prefix + k: v for k, v in data.items()})
            elif "secretRef" in src:
                data = one(docs, "Secret", src["secretRef"]["name"]).get("data", {})
                env.update({prefix + k: base64.b64decode(v).decode() for k, v in data.items()})
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = self._expand(e["value"], env)
                continue
            ref = e["valueFrom"]
            if "secretKeyRef" in ref:
                s = one(docs, "Secret", ref["secretKeyRef"]["name"])
                env[e["name"]] = base64.b64decode(s["data"][ref["secretKeyRef"]["key"]]).decode()
            elif "configMapKeyRef" in ref:
                cm = one(docs, "ConfigMap", ref["configMapKeyRef"]["name"])
                env[e["name"]] = cm["data"][ref["configMapKeyRef"]["key"]]
            elif "fieldRef" in ref:
                path = ref["fieldRef"]["fieldPath"]
                env[e["name"]] = {
                    "metadata.name": self.name,
                    "metadata.namespace": "default",
                    "status.podIP": "127.0.0.1",
                    "spec.nodeName": "localhost",
                }[path]
            else:
                raise AssertionError(f"no local stand-in for env {e}")
        return env

    def _expand(self, s: str, env: dict | None = None) -> str:
        env = self.env if env is None else env
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)

    def rewrite(self, s: str) -> str:
        """Pod paths -> host dirs; Service names and listen addresses -> loopback."""
        for mp, host in self.mounts:
            if s == mp or s.startswith(mp + "/"):
                s = str(host) + s[len(mp):]
                break
        for pod_addr, local in sorted(self.cluster.addresses.items(), key=lambda t: -len(t[0])):
            if pod_addr.startswith(":"):
                if s == pod_addr:
                    s = local
            elif pod_addr in s:
                s = s.replace(pod_addr, local)
        return s

    def host_path(self, pod_path: str) -> Path:
        mapped = self.rewrite(pod_path)
        assert mapped != pod_path, f"{pod_path} is on no volume"
        return Path(mapped)

    def setting(self, flag: str) -> str | None:
        return setting(self.argv, self.env, flag)

    def process_env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.update(self.env)
        tmp = dict(self.mounts).get("/tmp")
        if tmp is not None:
            env["TMPDIR"] = str(tmp)
        return env

    def start(self) -> "LocalPod":
        """Starts the container; again after it stopped = a restart in the same pod."""
        self.log = open(self.dir / "log.txt", "ab")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.process_env(),
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.cluster.procs.append(self.proc)
        return self

    def logs(self, tail: int = 60) -> str:
        text = (self.dir / "log.txt").read_text(errors="replace")
        return "\n".join(text.splitlines()[-tail:])

    def describe(self) -> str:
        return f"--- {self.name}: {' '.join(self.argv)}\nexit: {self.proc.poll() if self.proc else None}\n{self.logs()}"


def wait_all(pods: list[LocalPod], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in pods:
        try:
            p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    running = [p for p in pods if p.proc.poll() is None]
    assert not running, f"still running after {timeout}s:\n" + "\n".join(p.describe() for p in pods)


@pytest.fixture
def cluster(rendered, tmp_path):
    c = Cluster(docs=rendered, root=tmp_path, bin=shardprep_bin())
    c.map_services()
    yield c
    c.stop_all()


def generate_shards(cluster: Cluster, coordinator: LocalPod, shards_n: int = 3, samples: int = 20) -> Path:
    shards = Path(coordinator.setting("input"))
    assert str(shards).startswith(str(cluster.root)), "the input was not mapped to a temp dir"
    shards.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [str(cluster.bin), "generate", "--output", str(shards), "--shards", str(shards_n), "--samples", str(samples)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"generate failed:\n{out.stderr}"
    assert len(list(shards.glob("*.tar"))) == shards_n
    return shards


def check_loopback_only(pods: list[LocalPod]) -> None:
    for p in pods:
        joined = " ".join(p.argv + list(p.env.values()))
        assert "shardprep-coordinator:" not in joined, f"{p.name}: Service name not mapped"
        assert "0.0.0.0" not in joined, f"{p.name}: would listen beyond loopback"
    listen = pods[0].setting("listen")
    assert listen and listen.startswith("127.0.0.1:"), listen


def check_job_output(cluster: Cluster, coordinator: LocalPod, pods: list[LocalPod]) -> None:
    out = Path(coordinator.setting("output"))
    assert str(out).startswith(str(cluster.root)), "the output was not mapped to a temp dir"
    dataset = coordinator.setting("dataset-id") or "dalle3"
    for name in (f"{dataset}.parquet", "report.json", "multidatabackend.json"):
        assert (out / name).is_file(), f"{out / name} missing:\n" + "\n".join(p.describe() for p in pods)
    report = json.loads((out / "report.json").read_text())
    assert report.get("verdict") == "ok", report
    shards = len(list(Path(coordinator.setting("input")).glob("*.tar")))
    for key in ("shards_total", "shards_done"):
        if key in report:
            assert report[key] == shards, (key, report)
    json.loads((out / "multidatabackend.json").read_text())
    assert any((out / "data").iterdir()), "no extracted data"
    verify = subprocess.run(
        [str(cluster.bin), "verify", str(out)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, f"verify failed:\n{verify.stdout}\n{verify.stderr}"
    for p in pods:
        assert not any(p.cwd.iterdir()), f"{p.name} wrote outside its volumes: {list(p.cwd.iterdir())}"


def test_manifests_run_a_job_locally(cluster):
    coordinator = cluster.pod("coordinator", "shardprep-coordinator-abcde")
    workers = [cluster.pod("worker", f"shardprep-worker-{i}") for i in range(2)]
    pods = [coordinator, *workers]
    check_loopback_only(pods)
    generate_shards(cluster, coordinator)

    coordinator.start()
    for w in workers:
        w.start()
    wait_all(pods, JOB_TIMEOUT_S)
    for p in pods:
        assert p.proc.returncode == 0, p.describe()
    check_job_output(cluster, coordinator, pods)


def test_workers_started_before_coordinator_wait_for_it(cluster):
    coordinator = cluster.pod("coordinator", "shardprep-coordinator-late")
    workers = [cluster.pod("worker", f"shardprep-worker-early-{i}") for i in range(2)]
    pods = [coordinator, *workers]
    check_loopback_only(pods)
    generate_shards(cluster, coordinator)

    for w in workers:
        w.start()
    time.sleep(3)
    for w in workers:
        assert w.proc.poll() is None, f"worker gave up with no coordinator:\n{w.describe()}"
    coordinator.start()
    wait_all(pods, JOB_TIMEOUT_S)
    for p in pods:
        assert p.proc.returncode == 0, p.describe()
    check_job_output(cluster, coordinator, pods)


def wait_until(predicate, timeout: float, what: str, pod: LocalPod, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert pod.proc.poll() is None, f"{pod.name} exited while waiting for {what}:\n{pod.describe()}"
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    raise AssertionError(f"no {what} within {timeout}s (last error: {last}):\n{pod.describe()}")


def test_coordinator_health_probe_serving(cluster):
    """What the kubelet's grpc probe asks: grpc.health.v1 Check(service=""), no token."""
    grpc = pytest.importorskip("grpc", reason="grpcio not installed (pip install -r k8s/requirements.txt)")
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2", reason="grpcio-health-checking not installed")
    health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")

    coordinator = cluster.pod("coordinator", "shardprep-coordinator-health")
    generate_shards(cluster, coordinator)
    coordinator.start()
    address = coordinator.setting("listen")
    # The probe's port is the container port the coordinator listens on.
    c = main_container(job_by_component(cluster.docs, "coordinator"))
    assert address == cluster.addresses[f"0.0.0.0:{c['readinessProbe']['grpc']['port']}"]
    service = c["readinessProbe"]["grpc"].get("service", "")

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving():
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            return resp.status == health_pb2.HealthCheckResponse.SERVING

        wait_until(serving, READY_TIMEOUT_S, "SERVING health status", coordinator)


def test_status_with_manifest_token(cluster):
    """`shardprep status` as the docs show it: the workers' token and URL; a wrong token is refused."""
    coordinator = cluster.pod("coordinator", "shardprep-coordinator-status")
    worker = cluster.pod("worker", "shardprep-worker-status")  # never started: its env and URL
    generate_shards(cluster, coordinator)
    coordinator.start()
    url = worker.setting("coordinator")
    assert url.startswith("http://127.0.0.1:")

    def status(env):
        return subprocess.run(
            [str(cluster.bin), "status", "--coordinator", url, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )

    def ok():
        r = status(worker.process_env())
        return r if r.returncode == 0 else None

    result = wait_until(ok, READY_TIMEOUT_S, "a successful `shardprep status`", coordinator)
    json.loads(result.stdout)

    bad = cluster.root / "bad-token"
    bad.write_text("not-the-token\n")
    env = worker.process_env()
    env.pop("SHARDPREP_TOKEN", None)
    env["SHARDPREP_TOKEN_FILE"] = str(bad)
    refused = status(env)
    assert refused.returncode != 0, f"a wrong token was accepted:\n{refused.stdout}"


def test_coordinator_restart_resumes(cluster):
    """What the coordinator Job does after a crash: the same container starts
    again on the same volumes and resumes; the running worker waits for it."""
    total = 40
    coordinator = cluster.pod("coordinator", "shardprep-coordinator-crash")
    worker = cluster.pod("worker", "shardprep-worker-survivor")
    generate_shards(cluster, coordinator, shards_n=total, samples=100)
    # The committed manifests (core's OUT/.shardprep/fragments layout).
    fragments = Path(coordinator.setting("output")) / ".shardprep" / "fragments"

    def committed() -> int:
        return len(list(fragments.glob("*.manifest.json"))) if fragments.is_dir() else 0

    coordinator.start()
    worker.start()
    wait_until(lambda: committed() >= 1, JOB_TIMEOUT_S, "a committed shard", coordinator, interval=0.01)
    coordinator.proc.kill()
    coordinator.proc.wait()
    before = committed()
    assert before < total, "the job ended before the crash: nothing to resume"
    time.sleep(1.5)
    assert worker.proc.poll() is None, f"the worker gave up while the coordinator was down:\n{worker.describe()}"

    coordinator.start()
    wait_all([coordinator, worker], JOB_TIMEOUT_S)
    for p in (coordinator, worker):
        assert p.proc.returncode == 0, p.describe()
    check_job_output(cluster, coordinator, [coordinator, worker])
    report = json.loads((Path(coordinator.setting("output")) / "report.json").read_text())
    if "shards_recovered" in report:
        assert report["shards_recovered"] >= before, report


def binary_has_metrics(bin_path: Path) -> bool:
    """Whether this build of the binary knows --metrics-listen."""
    out = subprocess.run([str(bin_path), "coordinator", "--help"], capture_output=True, text=True, timeout=20)
    return "--metrics-listen" in out.stdout


def test_coordinator_serves_metrics_where_the_manifests_say(cluster):
    """The coordinator container, run as the manifests say, answers GET /metrics
    on its (mapped) metrics port with the Prometheus text format."""
    if not binary_has_metrics(cluster.bin):
        pytest.skip("this shardprep build has no --metrics-listen yet")
    import urllib.request

    coordinator = cluster.pod("coordinator", "shardprep-coordinator-metrics")
    generate_shards(cluster, coordinator)
    address = coordinator.setting("metrics-listen")
    assert address == cluster.addresses[f"0.0.0.0:{METRICS_PORT}"], address
    coordinator.start()

    def page():
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as r:
            return r.read().decode()

    text = wait_until(page, READY_TIMEOUT_S, "a /metrics page", coordinator)
    assert "shardprep_shards" in text, text[:2000]

"""infra/: the container image definition, the Kubernetes manifests and the Terraform
configuration are checked with the tools this machine can install (no Docker engine, no
terraform or helm binary here):

- the manifests validate against the Kubernetes API schemas, strictly (kubernetes-validate);
- the Terraform files parse as HCL (python-hcl2), every `var.` and resource reference
  resolves, and the DynamoDB tables have the keys Weir's DynamoDB backend creates;
- the Dockerfile parses and builds the `weir` binary;
- every weir flag the manifests and task definitions pass exists in that command's --help.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import hcl2
import yaml
from conftest import weir_bin
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def blocks(doc: dict, kind: str) -> dict[tuple[str, str], dict]:
    """{(type, name): body} of `resource` or `data` blocks."""
    out = {}
    for entry in doc.get(kind, []):
        for rtype, named in entry.items():
            for name, body in named.items():
                out[(unquote(rtype), unquote(name))] = body
    return out


def terraform() -> tuple[dict, str]:
    docs, text = {}, ""
    for f in sorted((INFRA / "terraform").glob("*.tf")):
        src = f.read_text()
        text += src
        with open(f) as fh:
            doc = hcl2.load(fh)
        for k, v in doc.items():
            docs.setdefault(k, []).extend(v if isinstance(v, list) else [v])
    return docs, text


def test_kubernetes_manifests_validate_strictly():
    files = sorted(str(p) for p in (INFRA / "kubernetes").glob("*.yaml"))
    assert files
    tool = Path(sys.executable).parent / "kubernetes-validate"
    out = subprocess.run([str(tool), "--strict", *files], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed for resource statefulset/weir-gateway" in out.stdout + out.stderr
    assert "passed for resource deployment/weir-scaler" in out.stdout + out.stderr


def test_kubernetes_scaler_may_scale_the_gateways_and_nothing_else():
    """The scaler's Role grants get/patch on the gateway StatefulSet's scale subresource
    (what `--launcher kubernetes` calls), in its namespace, and the Deployment runs it with
    flags `weir scaler` knows, against the StatefulSet weir.yaml defines."""
    docs = [d for d in yaml.safe_load_all((INFRA / "kubernetes" / "scaler.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert {"ServiceAccount", "Role", "RoleBinding", "Deployment"} <= set(by_kind)
    rules = by_kind["Role"]["rules"]
    scale = [r for r in rules if "statefulsets/scale" in r["resources"]]
    assert scale and {"get", "patch"} <= set(scale[0]["verbs"])
    assert all(r["apiGroups"] == ["apps"] and r.get("resourceNames") == ["weir-gateway"]
               for r in rules), rules
    assert not any("*" in r["verbs"] for r in rules)
    binding = by_kind["RoleBinding"]
    assert binding["roleRef"]["name"] == by_kind["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == by_kind["ServiceAccount"]["metadata"]["name"]
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]
    args = pod["containers"][0]["args"]
    assert args[0] == "scaler" and args[args.index("--launcher") + 1] == "kubernetes"
    sts = args[args.index("--k8s-statefulset") + 1]
    gateways = [d for d in yaml.safe_load_all((INFRA / "kubernetes" / "weir.yaml").read_text())
                if d and d["kind"] == "StatefulSet"]
    assert [g["metadata"]["name"] for g in gateways] == [sts]
    flags = {a for a in args if a.startswith("--")}
    assert flags <= help_flags("scaler"), flags - help_flags("scaler")


def test_terraform_parses_and_references_resolve():
    docs, text = terraform()
    resources = blocks(docs, "resource")
    data = blocks(docs, "data")
    variables = {unquote(k) for v in docs.get("variable", []) for k in v}
    for kind in ("aws_s3_bucket", "aws_ecs_service", "aws_ecs_task_definition", "aws_lb",
                 "aws_iam_role", "aws_ecs_cluster"):
        assert any(t == kind for t, _ in resources), f"no {kind}"
    # Every var.X is declared; every aws_*.name and data.aws_*.name reference exists.
    for name in set(re.findall(r"\bvar\.([a-z_]+)", text)):
        assert name in variables, f"var.{name} is not declared"
    for rtype, name in set(re.findall(r"(?<![.\w])(aws_[a-z0-9_]+)\.([a-z0-9_]+)\.", text)):
        assert (rtype, name) in resources, f"{rtype}.{name} is not declared"
    for rtype, name in set(re.findall(r"\bdata\.(aws_[a-z0-9_]+)\.([a-z0-9_]+)", text)):
        assert (rtype, name) in data, f"data.{rtype}.{name} is not declared"
    # The tables match what `weir metadata init` creates: <prefix>-meta (pk S, sk S) and
    # <prefix>-index (pk S, sk N).
    tables = {unquote(b["name"]): b for (t, _), b in resources.items() if t == "aws_dynamodb_table"}
    want = {"${var.name}-meta": {"pk": "S", "sk": "S"}, "${var.name}-index": {"pk": "S", "sk": "N"}}
    assert set(tables) == set(want), tables.keys()
    for name, keys in want.items():
        t = tables[name]
        assert (unquote(t["hash_key"]), unquote(t["range_key"])) == ("pk", "sk")
        attrs = {unquote(a["name"]): unquote(a["type"]) for a in t["attribute"]}
        assert attrs == keys, (name, attrs)


def test_dockerfile_builds_the_weir_binary():
    parser = DockerfileParser(path=str(INFRA / "Dockerfile"))
    stages = [i for i in parser.structure if i["instruction"] == "FROM"]
    assert len(stages) == 2, "a build stage and a slim runtime stage"
    text = parser.content
    assert "cargo build --release --locked --bin weir" in text
    entry = [i for i in parser.structure if i["instruction"] == "ENTRYPOINT"]
    assert entry and '"weir"' in entry[0]["value"]
    assert "USER weir" in text


def flags_in(command: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command))


def help_flags(*cmd: str) -> set[str]:
    out = subprocess.run([str(weir_bin()), *cmd, "--help"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return flags_in(out.stdout)


def test_infra_passes_only_flags_weir_knows():
    gateway = help_flags("gateway")
    scaler = help_flags("scaler")
    k8s = (INFRA / "kubernetes" / "weir.yaml").read_text()
    m = re.search(r"exec weir gateway(.*?)(?:\n\s*env:)", k8s, re.S)
    assert m, "the gateway command in the manifests"
    assert {"--node-id", "--advertise", "--listen"} <= flags_in(m.group(1))
    assert flags_in(m.group(1)) <= gateway, flags_in(m.group(1)) - gateway
    _, tf = terraform()
    m = re.search(r"exec weir gateway([^\"]*(?:\\\"[^\"]*)*)", tf)
    assert m, "the gateway command in the task definition"
    assert flags_in(m.group(1)) <= gateway, flags_in(m.group(1)) - gateway
    m = re.search(r'"scaler", "--launcher"(.*?)\]', tf, re.S)
    assert m, "the scaler command in the task definition"
    assert {"--ecs-cluster", "--metadata", "--max-gateways"} <= flags_in(m.group(1))
    assert flags_in('--launcher' + m.group(1)) <= scaler, flags_in(m.group(1)) - scaler
    # The environment variables the manifests set are ones weir reads.
    env_help = subprocess.run([str(weir_bin()), "gateway", "--help"], capture_output=True,
                              text=True, timeout=30).stdout
    for var in re.findall(r"^\s+(WEIR_[A-Z_]+):", k8s, re.M):
        assert f"[env: {var}=" in env_help, f"{var} is not a weir gateway setting"


def test_terraform_is_formatted():
    """`terraform fmt -check` (needs no provider download; `terraform validate` does, and this
    machine reaches no provider registry)."""
    import shutil

    import pytest
    tf = shutil.which("terraform")
    if tf is None:
        pytest.skip("terraform is not installed on this machine")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CLI_CONFIG_FILE"}
    out = subprocess.run([tf, "fmt", "-check", "-diff", str(INFRA / "terraform")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr

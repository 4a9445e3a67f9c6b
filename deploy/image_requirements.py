"""Prints what the image's build stage installs, one requirement a line: the service's dependencies
(pyproject.toml) and the code generator's tools (grpcio-tools, setuptools: the Dockerfile removes
them once the code is generated), each at its pin. Every transitive pin comes from requirements.lock
(`pip install -c requirements.lock -r ...`), so the image runs exactly what `make` tests.

    python image_requirements.py [pyproject.toml]
"""

import sys
import tomllib

BUILD_TOOLS = ("grpcio-tools", "setuptools")


def requirements(pyproject: dict) -> list[str]:
    project = pyproject["project"]
    tools = [r for r in project["optional-dependencies"]["dev"] if r.split("==")[0] in BUILD_TOOLS]
    if len(tools) != len(BUILD_TOOLS):
        raise SystemExit(f"pyproject.toml: the dev dependencies must pin {', '.join(BUILD_TOOLS)}")
    return [*project["dependencies"], *tools]


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as file:
        print("\n".join(requirements(tomllib.load(file))))

"""A Dockerfile read the way ``docker build --build-arg ...`` reads it, for checks without docker.

Enough of the format for deploy/images/Dockerfile: global and per-stage ARGs with build-arg
values, ``${NAME}`` / ``$NAME`` substitution of ARGs in scope, named stages, a stage built
``FROM`` another (a build arg may name it, as ``FROM ${SERVICE}`` does) inheriting its ENV,
EXPOSE, VOLUME, ENTRYPOINT and USER, and ``COPY --from=<stage>``. The image is the last stage and
the chain of stages it is built on; what it puts in /app is what the stage it copies /app from
copies there.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _expand(text: str, scope: Mapping[str, str]) -> str:
    """ARG substitution; variables not in scope (``$PATH``, the shell's own) stay as written."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return scope.get(name, match.group(0))

    return _VARIABLE.sub(value, text)


@dataclasses.dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]]  # (INSTRUCTION, rest with the stage's ARGs expanded)

    def all(self, instruction: str) -> list[str]:
        return [rest for name, rest in self.instructions if name == instruction]


class Dockerfile:
    def __init__(self, path: Path, build_args: Mapping[str, str] | None = None) -> None:
        args = dict(build_args or {})
        text = path.read_text().replace("\\\n", " ")
        global_args: dict[str, str] = {}
        self.stages: list[Stage] = []
        scope: dict[str, str] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            instruction, _, rest = line.partition(" ")
            instruction, rest = instruction.upper(), rest.strip()
            if instruction == "ARG":
                name, has_default, default = rest.partition("=")
                if not self.stages:  # before the first FROM: usable in FROM lines
                    if name in args or has_default:
                        global_args[name] = args.get(name, default)
                    continue
                # Inside a stage an ARG is in scope only once declared (again) there.
                if name in args or name in global_args or has_default:
                    scope[name] = args.get(name, global_args.get(name, default))
                continue
            if instruction == "FROM":
                parts = _expand(rest, global_args).split()
                stage_name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
                self.stages.append(Stage(stage_name, parts[0], []))
                scope = {}
                continue
            assert self.stages, f"{path}: {instruction} before FROM"
            self.stages[-1].instructions.append((instruction, _expand(rest, scope)))

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages if stage.name is not None]

    def image(self) -> list[Stage]:
        """The stages the built image is made of: the last one and those it is built FROM."""
        chain = [self.stages[-1]]
        while chain[0].base in self.stage_names:
            chain.insert(0, self.stage(chain[0].base))
        return chain

    def runtime(self, instruction: str) -> list[str]:
        return [rest for stage in self.image() for rest in stage.all(instruction)]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for rest in self.runtime("ENV"):
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
        return env

    def entrypoint(self) -> list[str]:
        command: list[str] = json.loads(self.runtime("ENTRYPOINT")[-1])
        return command

    def user(self) -> str:
        return self.runtime("USER")[-1]

    def exposed(self) -> set[int]:
        return {int(port) for rest in self.runtime("EXPOSE") for port in rest.split()}

    def volumes(self) -> set[str]:
        return {path for rest in self.runtime("VOLUME") for path in json.loads(rest)}

    def app_stage(self) -> Stage:
        """The stage whose /app the image copies (``COPY --from=<stage> /app /app``)."""
        for rest in self.runtime("COPY"):
            parts = rest.split()
            if parts[0].startswith("--from=") and parts[1:] == ["/app", "/app"]:
                return self.stage(parts[0].removeprefix("--from="))
        raise AssertionError("the image copies no /app from a build stage")

    def copies_into_app(self) -> list[tuple[str, str]]:
        """(source in the repository, destination under /app) of the COPY lines of the stage the
        image takes /app from, and of the image's own stages (a service's extra package)."""
        pairs = []
        lines = self.app_stage().all("COPY") + [
            rest for rest in self.runtime("COPY") if not rest.startswith("--from=")
        ]
        for rest in lines:
            parts = rest.split()
            if len(parts) == 2 and parts[1].startswith("/app/"):
                pairs.append((parts[0], parts[1].removeprefix("/app/")))
        return pairs

"""What a task runs in and with: its container, its application packages, and its command template."""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.pools import APP_SETTING_NAME, check_one_line

PATH_PLACEHOLDERS = frozenset({"input", "output_dir", "app_dir"})
# A group's task (shared/groups.py): its members' local paths, space-separated, and its key as a safe token.
GROUP_PLACEHOLDERS = frozenset({"inputs", "group"})
PACKAGE_PLACEHOLDER = "package"
OUTPUT_DIR = "out"
APP_DIR = "app"
SHELL = "/bin/sh"

# Docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest], path lower case.
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)
REGISTRY_SERVER = re.compile(rf"^{_DOMAIN}$")
IDENTITY_ID = re.compile(
    r"(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$"
)
PACKAGE_ID = r"^[A-Za-z0-9_-]{1,64}$"  # Batch application ids: letters, digits, hyphens, underscores, 64 at most
PACKAGE_VERSION = r"^[A-Za-z0-9_.-]{1,64}$"


def image_domain(image: str) -> str | None:
    """The registry an image reference names, None for Docker Hub's implicit one."""
    match = IMAGE_REFERENCE.match(image)
    domain = match.group("domain") if match else None
    # Docker's rule: the first part is a registry only if it has a '.' or ':' or is 'localhost'
    if domain and ("." in domain or ":" in domain or domain == "localhost"):
        return domain
    return None


class RegistrySpec(BaseModel):
    """A private registry: a managed identity (AcrPull), or a username and the NAME of an app setting that holds
    the password."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: Annotated[str, Field(min_length=1, max_length=253)]
    identity: str | None = None
    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    password_setting: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError(
                "password: an inline password is refused; put it in an app setting and give that setting's name "
                "as password_setting (or use identity)"
            )
        return data

    @field_validator("server")
    @classmethod
    def _server(cls, server: str) -> str:
        if not REGISTRY_SERVER.match(server):
            raise ValueError(f"{server!r} is not a registry host name (e.g. myregistry.azurecr.io)")
        return server

    @field_validator("identity")
    @classmethod
    def _identity(cls, identity: str | None) -> str | None:
        if identity is not None and not IDENTITY_ID.match(identity):
            raise ValueError(
                "must be a user-assigned managed identity's resource id: /subscriptions/<id>/resourceGroups/<rg>/"
                "providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"
            )
        return identity

    @field_validator("password_setting")
    @classmethod
    def _setting_name(cls, name: str | None) -> str | None:
        if name is not None and not APP_SETTING_NAME.match(name):
            raise ValueError(f"{name!r} is not an app setting name ([A-Za-z_][A-Za-z0-9_]*)")
        return name

    @model_validator(mode="after")
    def _one_credential(self) -> RegistrySpec:
        login = self.username is not None or self.password_setting is not None
        if self.identity is not None and login:
            raise ValueError("give identity, or username and password_setting, not both")
        if self.identity is None and (self.username is None or self.password_setting is None):
            raise ValueError("give identity, or both username and password_setting")
        return self


class ContainerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: Annotated[str, Field(min_length=1, max_length=255)]
    registry: RegistrySpec | None = None
    run_options: Annotated[str, Field(max_length=1000)] = ""
    working_directory: Literal["taskWorkingDirectory", "containerImageDefault"] = "taskWorkingDirectory"

    @field_validator("image")
    @classmethod
    def _reference(cls, image: str) -> str:
        if not IMAGE_REFERENCE.match(image):
            raise ValueError(
                f"{image!r} is not an image reference ([registry/]name[:tag][@sha256:digest], name in lower case)"
            )
        return image

    @field_validator("run_options")
    @classmethod
    def _one_line(cls, options: str) -> str:
        return check_one_line(options)

    @model_validator(mode="after")
    def _image_on_registry(self) -> ContainerSpec:
        if self.registry is not None and image_domain(self.image) != self.registry.server:
            raise ValueError(f"image {self.image!r} is not on registry {self.registry.server!r}; name it in full")
        return self


class PackageRef(BaseModel):
    """A Batch application package the task needs; no version means the application's default version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=PACKAGE_ID)]
    version: Annotated[str, Field(pattern=PACKAGE_VERSION)] | None = None

    def variable(self) -> str:
        """The environment variable in which Batch gives a Linux task the package's directory.

        Batch: on Linux the application id keeps its case and periods, hyphens and number signs become
        underscores; the version is appended (`_<version>`) when the reference names one.
        """
        name = re.sub(r"[^A-Za-z0-9_]", "_", self.id)
        if self.version:
            name += "_" + re.sub(r"[^A-Za-z0-9_]", "_", self.version)
        return f"AZ_BATCH_APP_PACKAGE_{name}"


def template_fields(command: str) -> list[tuple[str, str]]:
    """The placeholders of a command template as (name, spec): `{package:ID}` is ('package', 'ID')."""
    try:
        parsed = list(string.Formatter().parse(command))
    except ValueError as error:
        raise ValueError(f"command template {command!r} is malformed: {error}") from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if conversion:
            raise ValueError(f"placeholder {{{name}!{conversion}}} takes no conversion")
        fields.append((name, spec or ""))
    return fields


def check_template(command: str) -> str:
    """The command template uses only batchdrop's placeholders."""
    unknown = []
    for name, spec in template_fields(command):
        if name == PACKAGE_PLACEHOLDER:
            if not re.match(PACKAGE_ID, spec):
                raise ValueError(f"{{package:{spec}}} must name an application package id")
        elif name not in PATH_PLACEHOLDERS | GROUP_PLACEHOLDERS:
            unknown.append(name)
        elif spec:
            raise ValueError(f"placeholder {{{name}:{spec}}} takes no format spec")
    if unknown:
        known = ", ".join("{" + n + "}" for n in sorted(PATH_PLACEHOLDERS | GROUP_PLACEHOLDERS)) + ", {package:ID}"
        raise ValueError(
            f"command uses unknown placeholder(s) {', '.join('{' + n + '}' for n in sorted(set(unknown)))}; "
            f"known: {known}"
        )
    return command


def needs_shell(command: str, container: ContainerSpec | None) -> bool:
    """Whether the command must run under /bin/sh -c: a package directory is only known from Batch's variable,
    and in the image's own working directory the task's files are only found by their absolute path."""
    fields = template_fields(command)
    if any(name == PACKAGE_PLACEHOLDER for name, _ in fields):
        return True
    image_default = container is not None and container.working_directory == "containerImageDefault"
    return image_default and any(name in PATH_PLACEHOLDERS for name, _ in fields)


def render(
    command: str,
    input_path: str,
    packages: tuple[PackageRef, ...],
    container: ContainerSpec | None,
    inputs: tuple[str, ...] = (),
    group: str = "",
) -> str:
    """The task's command line. Plain: the template with batchdrop's own relative paths. Under the shell: every
    placeholder is a quoted variable reference, so nothing of an input's name is ever read by the shell.

    `inputs` and `group` (a group's task) are batchdrop's own too: local paths and a token of safe characters
    only (shared/ids.py group_local_paths, group_token), never a blob name.
    """
    by_id = {package.id: package for package in packages}
    if not needs_shell(command, container):
        plain = {
            "input": input_path, "output_dir": OUTPUT_DIR, "app_dir": APP_DIR, "inputs": " ".join(inputs),
            "group": group,
        }  # fmt: skip
        return _substitute(command, lambda name, spec: plain[name])
    in_shell = {
        "input": '"$AZ_BATCH_TASK_WORKING_DIR/$BATCHDROP_INPUT"',
        "output_dir": '"$AZ_BATCH_TASK_WORKING_DIR/$BATCHDROP_OUTPUT_DIR"',
        "app_dir": f'"$AZ_BATCH_TASK_WORKING_DIR/{APP_DIR}"',
        # Unquoted on purpose: the shell splits it into the members' paths, which hold no space, quote or glob
        # character; relative, as the shell runs in the task's working directory (PipelineSpec refuses
        # {inputs} with the image's own working directory).
        "inputs": "$BATCHDROP_INPUTS",
        "group": '"$BATCHDROP_GROUP"',
    }
    inner = _substitute(
        command,
        lambda name, spec: f'"${by_id[spec].variable()}"' if name == PACKAGE_PLACEHOLDER else in_shell[name],
    )
    return f"{SHELL} -c '{inner}'"


def _substitute(command: str, value: Any) -> str:
    parts = []
    for literal, name, spec, _ in string.Formatter().parse(command):
        parts.append(literal)
        if name is not None:
            parts.append(value(name, spec or ""))
    return "".join(parts)

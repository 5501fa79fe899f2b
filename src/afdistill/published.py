"""Published weights by name: torchvision's weight enums and the KD papers' published CIFAR-100 teachers.

A grid may name weights instead of giving a file (``teachers.checkpoints``,
``teachers.init``, ``methods.<entry>.init``):

``torchvision:ResNet34_Weights.IMAGENET1K_V1``
    torchvision's own enum (``torchvision.models.get_weight``): its URL, whose file name carries the first
    hex digits of the file's SHA-256 (torchvision's ``check_hash``), is fetched to
    ``data/weights/<file name>`` (the path the grids named by hand before) and its hash checked; a file
    already there is used as it is, as torch.hub's cache is.
``teachers: {published: mdistiller_cifar100}``
    every teacher of the grid from a published set (:data:`TEACHER_SETS`): the set's archive is fetched once
    into ``data/weights/<set>/``, its SHA-256 recorded in ``data/weights/<set>/SHA256SUMS`` (where the
    publisher gives none) and checked on every later fetch; the unpacked checkpoints load as they are.

A file fetched once is reused, so the pipeline fetches before any job (where the grid is checked), and DVC
pins the files as the jobs' dependencies. ``$AFDISTILL_WEIGHTS_MIRROR`` (a base URL) replaces the scheme and
host of every URL: a mirror on a cluster without internet, or a test's local server.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path("data/weights")
MIRROR_ENV = "AFDISTILL_WEIGHTS_MIRROR"
TORCHVISION = "torchvision:"


class FetchError(ValueError):
    """Weights that cannot be named, fetched or verified; the message names the reference, the URL and the file."""


@dataclass(frozen=True)
class TeacherSet:
    """Published teacher checkpoints in one archive: ``members`` maps our architecture names to paths inside."""

    url: str
    members: dict[str, str]
    source: str  # where the layout and the URL are stated
    sha256: str | None = None  # the publisher's checksum of the archive, where it gives one


#: mdistiller's ``cifar_teachers.tar`` (its README, "Getting started"; paths from
#: megvii-research/mdistiller@a08d46f:mdistiller/models/cifar/__init__.py): RepDistiller's CIFAR-100 teachers,
#: ``{"model": state_dict, ...}`` dicts as RepDistiller saves them. No checksum is published: the first fetch
#: records one.
TEACHER_SETS: dict[str, TeacherSet] = {
    "mdistiller_cifar100": TeacherSet(
        url="https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar",
        members={
            arch: f"cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth"
            for arch, name in [
                ("resnet56", "resnet56"),
                ("resnet110", "resnet110"),
                ("resnet32x4", "resnet32x4"),
                ("resnet50", "ResNet50"),
                ("wrn_40_2", "wrn_40_2"),
                ("vgg13", "vgg13"),
            ]
        },
        source="megvii-research/mdistiller@a08d46f: README.md and mdistiller/models/cifar/__init__.py",
    ),
}


def is_named(reference: str) -> bool:
    return reference.startswith(TORCHVISION)


def _url(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    return mirror.rstrip("/") + urlsplit(url).path


def torchvision_weights(reference: str, where: str):
    """The enum member ``reference`` names (``torchvision:ResNet34_Weights.IMAGENET1K_V1``)."""
    from torchvision.models import get_weight

    name = reference[len(TORCHVISION) :]
    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError) as error:
        raise FetchError(
            f"{where}: {reference!r} is not one of torchvision's weights ({error}); name one as "
            f"torchvision:<Enum>.<member>, e.g. torchvision:ResNet34_Weights.IMAGENET1K_V1 "
            f"(torchvision.models.list_models() and get_model_weights(name) list them)"
        ) from None


def local_path(reference: str, where: str) -> str:
    """Where a reference's file lives here: a named one under ``data/weights/``, a path as it is."""
    if not is_named(reference):
        return reference
    return str(ROOT / Path(urlsplit(torchvision_weights(reference, where).url).path).name)


def teacher_paths(name: str, teachers: list[str], where: str) -> dict[str, str]:
    """Each teacher's checkpoint in published set ``name`` (its local path once fetched)."""
    if name not in TEACHER_SETS:
        raise FetchError(f"{where}: {name!r} is not a published teacher set; known: {', '.join(TEACHER_SETS)}")
    members = TEACHER_SETS[name].members
    missing = [arch for arch in teachers if arch not in members]
    if missing:
        raise FetchError(f"{where}: set {name!r} has no teacher {', '.join(missing)}; it has {', '.join(members)}")
    return {arch: str(ROOT / name / members[arch]) for arch in teachers}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, where: str, final: Path | None = None) -> None:
    """``url`` to ``target`` (torch.hub writes a temporary file beside it first); ``final``: where the file
    ends up, for the message."""
    from torch.hub import download_url_to_file

    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"{where}: fetching {url} -> {target}", file=sys.stderr)
    try:
        download_url_to_file(url, str(target), progress=sys.stderr.isatty())
    except OSError as error:  # URLError, HTTPError and refused connections are OSErrors
        raise FetchError(
            f"{where}: could not fetch {url} ({error}); download it by hand to {final or target}, or set "
            f"${MIRROR_ENV} to a mirror"
        ) from None


def fetch(reference: str, where: str) -> Path:
    """The file of a torchvision reference, fetched once and its hash prefix checked.

    As torch.hub's cache: a file already at the local path is used as it is (the user's own copy, or an
    earlier fetch); the jobs' fingerprints and DVC hash its content from there on.
    """
    weights = torchvision_weights(reference, where)
    target = Path(local_path(reference, where))
    if target.is_file():
        return target
    # torchvision's file names end in the first hex digits of their SHA-256 (resnet34-b627a593.pth)
    expected = target.stem.rsplit("-", 1)[-1]
    partial = target.with_name(target.name + ".part")
    _download(_url(weights.url), partial, where, final=target)
    actual = _sha256(partial)
    if not actual.startswith(expected):
        bad = target.with_name(target.name + ".corrupt")
        partial.replace(bad)
        raise FetchError(
            f"{where}: the download of {target.name} from {_url(weights.url)} has SHA-256 "
            f"{actual[:16]}..., not the {expected}... its name promises; kept aside as {bad}. Fetch "
            f"it again, or check the mirror in ${MIRROR_ENV}"
        )
    partial.replace(target)
    return target


def fetch_teacher_set(name: str, teachers: list[str], where: str) -> Path:
    """The checkpoints of ``teachers`` from set ``name``, under ``data/weights/<name>/``: its archive fetched
    once, its SHA-256 checked against the one recorded at the first fetch (or the publisher's), and the
    teachers' files unpacked from it."""
    teacher_set = TEACHER_SETS[name]
    folder = ROOT / name
    members = [teacher_set.members[arch] for arch in teachers]
    if all((folder / member).is_file() for member in members):
        return folder
    sums = folder / "SHA256SUMS"
    url = _url(teacher_set.url)
    archive = folder / Path(urlsplit(teacher_set.url).path).name
    if not archive.is_file():
        _download(url, archive, where)
    actual = _sha256(archive)
    recorded = sums.read_text().split()[0] if sums.is_file() else teacher_set.sha256
    if recorded is not None and actual != recorded:
        bad = archive.with_name(archive.name + ".corrupt")
        archive.replace(bad)
        raise FetchError(
            f"{where}: {archive} (from {url}) has SHA-256 {actual}, not the {recorded} recorded "
            f"in {sums if sums.is_file() else 'afdistill.published for ' + name}; kept aside as {bad}"
        )
    try:
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            missing = [member for member in members if member not in names]
            if missing:
                raise FetchError(
                    f"{where}: {archive} (from {url}) lacks {', '.join(missing)}; the set's layout: "
                    f"{teacher_set.source}"
                )
            tar.extractall(folder, members=[tar.getmember(member) for member in members], filter="data")
    except tarfile.TarError as error:
        raise FetchError(
            f"{where}: {archive} (from {url}) is not a readable tar archive ({error}); delete it to fetch it again"
        ) from None
    if not sums.is_file():
        sums.write_text(f"{actual}  {archive.name}\n")
    return folder

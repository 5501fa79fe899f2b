"""Published weights by name, fetched from a local HTTP server in the published layouts: torchvision's weight
enums (hash prefix in the file name) and mdistiller's CIFAR-100 teacher archive (checksum recorded once)."""

import hashlib
import io
import json
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from conftest import TINY_GRID

from afdistill import published
from afdistill.grid import Grid, GridError
from afdistill.kinds import teacher as teacher_kind
from afdistill.models import create_model


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server of ``tmp_path/served``, set as the weights mirror; the tests run in ``tmp_path``."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(published.MIRROR_ENV, f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.chdir(tmp_path)
    yield served
    httpd.shutdown()


def _saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_a_torchvision_enum_is_fetched_once_and_a_corrupt_download_refused(server, monkeypatch):
    import torchvision.models
    from torchvision.models._api import Weights, WeightsEnum

    torch.manual_seed(0)
    payload = _saved(create_model("resnet8", 10).state_dict())
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    (server / "models").mkdir()
    (server / "models" / f"resnet8-{prefix}.pth").write_bytes(payload)

    class Resnet8_Weights(WeightsEnum):  # an enum as torchvision declares its own, at an URL with a hash prefix
        TEST = Weights(url=f"https://download.pytorch.org/models/resnet8-{prefix}.pth", transforms=None, meta={})

    monkeypatch.setattr(torchvision.models, "Resnet8_Weights", Resnet8_Weights, raising=False)
    path = published.fetch("torchvision:Resnet8_Weights.TEST", "methods.kd.init")
    assert path.read_bytes() == payload and str(path) == f"data/weights/resnet8-{prefix}.pth"
    (server / "models" / f"resnet8-{prefix}.pth").unlink()
    assert published.fetch("torchvision:Resnet8_Weights.TEST", "methods.kd.init") == path  # once: not again

    # torchvision's own ResNet18 enum; the mirror serves something else under its file name
    (server / "models" / "resnet18-f37072fd.pth").write_bytes(b"not the weights")
    with pytest.raises(
        published.FetchError,
        match=r"teachers.checkpoints.resnet18_imagenet: the download of "
        r"resnet18-f37072fd.pth from http://127.0.0.1:\d+/models/"
        r"resnet18-f37072fd.pth has SHA-256 .*not the f37072fd",
    ):
        published.fetch("torchvision:ResNet18_Weights.IMAGENET1K_V1", "teachers.checkpoints.resnet18_imagenet")
    assert not (server.parent / "data/weights/resnet18-f37072fd.pth").exists()
    assert (server.parent / "data/weights/resnet18-f37072fd.pth.corrupt").read_bytes() == b"not the weights"
    with pytest.raises(published.FetchError, match="is not one of torchvision's weights"):
        published.fetch("torchvision:ResNet18_Weights.NOPE", "methods.kd.init")


def _teacher_archive(state) -> bytes:
    """mdistiller's cifar_teachers.tar layout, with one RepDistiller checkpoint in it."""
    checkpoint = _saved({"model": state, "epoch": 240, "best_acc": np.float64(72.34)})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth")
        info.size = len(checkpoint)
        tar.addfile(info, io.BytesIO(checkpoint))
    return buffer.getvalue()


def test_a_published_teacher_set_is_fetched_checksummed_and_read_by_the_grid(server):
    torch.manual_seed(0)
    state = create_model("resnet56", 100).state_dict()
    url_path = server / "megvii-research/mdistiller/releases/download/checkpoints"
    url_path.mkdir(parents=True)
    (url_path / "cifar_teachers.tar").write_bytes(_teacher_archive(state))
    config = json.loads(json.dumps(TINY_GRID))
    config.update(
        dataset="cifar100",
        pairs=[{"teacher": "resnet56", "student": "resnet20"}],
        methods={"kd": {"alpha": 0.9, "temperature": 4}},
    )
    config["teachers"]["published"] = "mdistiller_cifar100"
    grid = Grid(config)
    path = "data/weights/mdistiller_cifar100/cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth"
    assert teacher_kind.spec(grid, "resnet56").checkpoint == path
    loaded = torch.load(path, weights_only=False)["model"]
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    sums = (server.parent / "data/weights/mdistiller_cifar100/SHA256SUMS").read_text()
    archive = server.parent / "data/weights/mdistiller_cifar100/cifar_teachers.tar"
    assert sums.split()[0] == hashlib.sha256(archive.read_bytes()).hexdigest()

    # a later fetch (the unpacked file lost) of an archive that changed on the server is refused, by name
    (server.parent / path).unlink()
    archive.unlink()
    torch.manual_seed(1)
    (url_path / "cifar_teachers.tar").write_bytes(_teacher_archive(create_model("resnet56", 100).state_dict()))
    with pytest.raises(
        GridError,
        match=r"teachers.published: data/weights/mdistiller_cifar100/cifar_teachers.tar "
        r"\(from http://127.0.0.1:\d+/megvii-research/.*\) has SHA-256 \w+, not the "
        r"\w+ recorded in data/weights/mdistiller_cifar100/SHA256SUMS",
    ):
        Grid(config)
    config["teachers"]["published"] = "nope"
    with pytest.raises(GridError, match="'nope' is not a published teacher set; known: mdistiller_cifar100"):
        Grid(config)
    config["teachers"]["published"] = "mdistiller_cifar100"
    config["pairs"] = [{"teacher": "resnet8", "student": "resnet8"}]
    with pytest.raises(GridError, match="set 'mdistiller_cifar100' has no teacher resnet8; it has resnet56, "):
        Grid(config)


def test_an_unreachable_mirror_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(published.MIRROR_ENV, "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(
        published.FetchError,
        match=r"methods.ft.init: could not fetch http://127.0.0.1:9/models/"
        r"resnet18-f37072fd.pth .*download it by hand to "
        r"data/weights/resnet18-f37072fd.pth,",
    ):
        published.fetch("torchvision:ResNet18_Weights.IMAGENET1K_V1", "methods.ft.init")

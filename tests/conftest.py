"""Shared fixtures: tiny models built from configs (no downloads), cached per session."""

from __future__ import annotations

import logging
import os
import sys
import uuid

import pytest

os.environ.setdefault("SIMS_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "PYTEST_XDIST_WORKER" in os.environ:  # two test workers on two cores: one torch thread each (and their subprocesses)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from sims_core.testing import TINY_ARCHITECTURES, tiny_model  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.ERROR)
if "PYTEST_XDIST_WORKER" in os.environ:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_lms():
    """One tiny model per supported architecture, built once."""
    return {arch: tiny_model(arch) for arch in TINY_ARCHITECTURES}


@pytest.fixture(params=TINY_ARCHITECTURES)
def any_tiny_lm(request, tiny_lms):
    return tiny_lms[request.param]


@pytest.fixture(scope="session")
def tiny_lm(tiny_lms):
    return tiny_lms["llama"]


@pytest.fixture(scope="session")
def embedded_lm():
    """The embedded SmolLM2-135M-Instruct (slow: first load dequantizes, then it is cached)."""
    from sims_core import load_model

    return load_model("embedded")


@pytest.fixture
def importable_module(tmp_path, monkeypatch):
    """``write(name, source)``: a module of the user's own code, importable as ``name`` during the
    test (forgotten after it); returns ``name``."""
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture
def no_installed_packages(monkeypatch):
    """importlib.metadata finds no installed distribution, as if every package looked up were missing."""
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)


# -- a real S3 API on loopback: moto's server, one bucket per test -------------------------
@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, moto_endpoint):
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_bucket(aws_env):
    import boto3

    name = f"sims-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1").create_bucket(Bucket=name)
    return name

"""Store fixtures: every store test runs against a local directory and a real S3 API (moto).

The S3 server (fixtures in tests/conftest.py) is moto's ThreadedMotoServer on 127.0.0.1 (a free port), started once per
session; each test gets its own bucket and fake credentials through the standard AWS variables
(AWS_ENDPOINT_URL included), so the code under test resolves S3 exactly as in production.
"""

from __future__ import annotations

import pytest

from storage import ArtifactStore


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore.open(tmp_path / "runs")
    bucket = request.getfixturevalue("s3_bucket")
    return ArtifactStore.open(f"s3://{bucket}/prefix")

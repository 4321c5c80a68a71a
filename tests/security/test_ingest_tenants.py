"""Issue 14, "ingest uses the same list": an ingested object becomes a job of the tenant whose
allow-list claims it, so that tenant's keys see it and no other tenant's do."""

from __future__ import annotations

import uuid

import boto3

from earshot import storage
from earshot.config import Settings, get_settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.ingest.submit import submit_object
from earshot.tenants import DEFAULT_TENANT, create_tenant
from tests.fixtures.ingest import make_wav


def test_ingested_objects_belong_to_the_tenant_that_claims_them(
    ingest_env: Settings, moto_server: str, s3_bucket: str
) -> None:
    team = f"ing-{uuid.uuid4().hex[:8]}"
    with session_scope(ingest_env.database_url) as s:
        create_tenant(s, tenant_id=team, allowed_sources=[f"s3://{s3_bucket}/{team}/"])
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    owners = {}
    for key in (f"{team}/call.wav", "unclaimed/call.wav"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=make_wav(0.3, 3))
        obj = storage.head(f"s3://{s3_bucket}/{key}", settings=get_settings())
        submitted = submit_object(obj, settings=ingest_env, enqueue=lambda job_id: None, source="test")
        with session_scope(ingest_env.database_url) as s:
            job = s.get(m.Job, submitted.job_id)
            assert job is not None
            owners[key] = job.tenant_id
    # an object no tenant claims stays with the default tenant (the operator's ingest buckets allow it)
    assert owners == {f"{team}/call.wav": team, "unclaimed/call.wav": DEFAULT_TENANT}

"""The shared fixtures themselves work: a real S3 server and one local Ray."""

import s3fs


def test_s3_server_round_trip(s3_server, s3_bucket):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["endpoint_url"]})
    fs.pipe(f"{s3_bucket}/hello.txt", b"hi")
    assert fs.cat(f"{s3_bucket}/hello.txt") == b"hi"


def test_ray_session(ray_session):
    assert ray_session.cluster_resources()["CPU"] == 2

"""A real S3 API on loopback for the HCP and OpenNeuro tests: moto's standalone server.

``start_hcp_server`` runs moto's S3 (and IAM) server on 127.0.0.1, creates
``hcp-openaccess`` with ``HCP_1200/{subject}/T1w/...`` objects (small NIfTIs of
demo subjects), an IAM user whose policy lets it read the release except one
subject (the way keys without the release's terms accepted are refused), and
then switches moto's authentication on, so unknown keys, wrong secrets and
denied objects give the same 403s as AWS.

``start_openneuro_server`` runs a second moto server, in a process of its own
with authentication off (moto cannot authorise anonymous requests), with a
bucket laid out like OpenNeuro's: ``openneuro.org/<accession>/sub-*/...``.

``FaultyProxy`` sits between a client and the server and can cut the next
responses short, flip a byte in them or answer 503 instead: transfer faults
on a real connection. It keeps the bytes clients sent, to check what requests carried.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
import nibabel as nib
import numpy as np
import requests

from mrisr.data.hcp import HCP_FILES
from mrisr.io import save_volume

BUCKET = "hcp-openaccess"
PREFIX = "HCP_1200"
READABLE = ("100307", "100408", "101915")  # real HCP-1200 IDs
DENIED = "102311"  # objects exist, the user's policy refuses them
NOT_A_NIFTI = "103414"  # its T1 object is not a NIfTI file
NO_T1 = "104012"  # a subject folder with a brain mask but no T1w (as HCP's subjects without structural scans)
OTHER_FOLDER = "documentation"  # a folder under the prefix that is not a subject
MULTIPART_KEY = "multipart/object.bin"  # uploaded in three parts (5 MiB, 5 MiB, 4 bytes)
CHECKSUMMED_KEY = "checksummed/object.bin"  # stored with a CRC32 checksum that botocore checks itself
ADMIN = {"aws_access_key_id": "moto-admin", "aws_secret_access_key": "moto-admin", "region_name": "us-east-1"}


@dataclass
class HCPServer:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    objects: dict[str, bytes] = field(default_factory=dict)  # key -> bytes
    server: object = None

    def key(self, subject: str, name: str) -> str:
        return f"{PREFIX}/{subject}/{HCP_FILES[name]}"


@functools.lru_cache(maxsize=1)
def _template_4mm() -> tuple[np.ndarray, np.ndarray]:
    """nilearn's 1 mm MNI152 T1 (read with nibabel: importing nilearn takes seconds), block-averaged to 4 mm."""
    folder = Path(importlib.util.find_spec("nilearn").origin).parent / "datasets" / "data"
    img = nib.load(folder / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    shape = [s // 4 for s in data.shape]
    blocks = data[: 4 * shape[0], : 4 * shape[1], : 4 * shape[2]].reshape(shape[0], 4, shape[1], 4, shape[2], 4)
    affine = img.affine @ np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = img.affine[:3, :3] @ np.full(3, 1.5) + img.affine[:3, 3]
    return blocks.mean(axis=(1, 3, 5)), affine


def small_subject(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small distinct subject (T1, mask, affine) at 4 mm: the template with its own gain, bias and noise."""
    template, affine = _template_4mm()
    rng = np.random.default_rng(index)
    mask = template > 0.5 * template.max() * 0.1
    ramp = np.linspace(-1, 1, template.shape[2])[None, None, :]
    t1 = template * rng.uniform(5, 15) * (1 + rng.uniform(-0.1, 0.1) * ramp)
    t1 = np.abs(t1 + rng.normal(0, 0.02 * t1.max(), t1.shape)).astype(np.float32)
    return t1, mask.astype(np.uint8), affine


def nifti_bytes(volume: np.ndarray, affine: np.ndarray, dtype, tmp_dir: Path) -> bytes:
    path = tmp_dir / "volume.nii.gz"
    save_volume(path, volume, affine, dtype=dtype)
    return path.read_bytes()


def start_hcp_server(tmp_dir: Path) -> HCPServer:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # Like the objects of the HCP release, uploaded without the flexible checksums
    # boto3 now adds by default: only the ETag (MD5) vouches for their bytes.
    s3 = boto3.client("s3", endpoint_url=url, config=Config(request_checksum_calculation="when_required"), **ADMIN)
    s3.create_bucket(Bucket=BUCKET)
    objects = {}
    for index, subject in enumerate(READABLE + (DENIED,)):
        t1, mask, affine = small_subject(index)
        objects[f"{PREFIX}/{subject}/{HCP_FILES['t1']}"] = nifti_bytes(t1, affine, np.float32, tmp_dir)
        objects[f"{PREFIX}/{subject}/{HCP_FILES['mask']}"] = nifti_bytes(mask, affine, np.uint8, tmp_dir)
    objects[f"{PREFIX}/{NOT_A_NIFTI}/{HCP_FILES['t1']}"] = b"<html>this is not a NIfTI file</html>" * 50
    objects[f"{PREFIX}/{NO_T1}/{HCP_FILES['mask']}"] = objects[f"{PREFIX}/{READABLE[0]}/{HCP_FILES['mask']}"]
    objects[f"{PREFIX}/{NO_T1}/T1w/{HCP_FILES['t1'].split('/')[1]}.md5"] = b"a key that starts like the T1's"
    objects[f"{PREFIX}/{OTHER_FOLDER}/README.txt"] = b"not a subject"
    for key, body in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    parts = [bytes([1]) * (5 * 2**20), bytes([2]) * (5 * 2**20), b"tail"]
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=MULTIPART_KEY)
    etags = [
        s3.upload_part(Bucket=BUCKET, Key=MULTIPART_KEY, PartNumber=n, UploadId=upload["UploadId"], Body=body)["ETag"]
        for n, body in enumerate(parts, start=1)
    ]
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=MULTIPART_KEY, UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, start=1)]},
    )
    objects[MULTIPART_KEY] = b"".join(parts)
    objects[CHECKSUMMED_KEY] = bytes(range(256)) * 64
    s3.put_object(Bucket=BUCKET, Key=CHECKSUMMED_KEY, Body=objects[CHECKSUMMED_KEY], ChecksumAlgorithm="CRC32")

    iam = boto3.client("iam", endpoint_url=url, **ADMIN)
    iam.create_user(UserName="hcp-reader")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": "*",
            },
            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/{PREFIX}/{DENIED}/*"},
        ],
    }
    iam.put_user_policy(UserName="hcp-reader", PolicyName="hcp-1200", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="hcp-reader")["AccessKey"]
    # From now on every request is authenticated and authorised, as on AWS.
    requests.post(f"{url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    return HCPServer(url, key["AccessKeyId"], key["SecretAccessKey"], objects, server)


def stop_hcp_server(hcp: HCPServer) -> None:
    requests.post(f"{hcp.endpoint_url}/moto-api/reset-auth", data=b"inf", timeout=10)
    hcp.server.stop()


OPENNEURO_BUCKET = "openneuro.org"
ACCESSION = "ds002748"
PRIVATE_KEY = "ds000002/sub-01/anat/sub-01_T1w.nii.gz"  # not public: anonymous reads are refused
# {subject: T1w keys below the subject's folder}; sub-04 has a functional scan only.
OPENNEURO_T1W = {
    "sub-01": ["anat/sub-01_T1w.nii.gz"],
    "sub-02": ["ses-1/anat/sub-02_ses-1_T1w.nii.gz", "ses-2/anat/sub-02_ses-2_T1w.nii.gz"],
    "sub-03": ["anat/sub-03_acq-mprage_T1w.nii.gz"],
    "sub-04": [],
}


@dataclass
class OpenNeuroServer:
    endpoint_url: str
    objects: dict[str, bytes] = field(default_factory=dict)  # key -> bytes
    process: subprocess.Popen | None = None

    def key(self, subject: str, below: str) -> str:
        return f"{ACCESSION}/{subject}/{below}"


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def _openneuro_objects(tmp_dir: Path) -> dict[str, bytes]:
    objects = {
        f"{ACCESSION}/dataset_description.json": json.dumps({"Name": "test", "BIDSVersion": "1.4.0"}).encode(),
        f"{ACCESSION}/participants.tsv": b"participant_id\n" + b"".join(f"{s}\n".encode() for s in OPENNEURO_T1W),
        "ds000001/sub-01/anat/sub-01_T1w.nii.gz": b"another dataset",
    }
    index = 10
    for subject, files in OPENNEURO_T1W.items():
        objects[f"{ACCESSION}/{subject}/func/{subject}_task-rest_bold.nii.gz"] = b"not read" * 10
        for below in files:
            t1, _, affine = small_subject(index)
            objects[f"{ACCESSION}/{subject}/{below}"] = nifti_bytes(t1, affine, np.float32, tmp_dir)
            index += 1
    return objects


def start_openneuro_server(tmp_dir: Path) -> OpenNeuroServer:
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(f"{url}/moto-api/data.json", timeout=1).raise_for_status()
            break
        except requests.RequestException:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("moto's server did not start")
    s3 = boto3.client("s3", endpoint_url=url, config=Config(request_checksum_calculation="when_required"), **ADMIN)
    s3.create_bucket(Bucket=OPENNEURO_BUCKET)
    objects = _openneuro_objects(tmp_dir)
    for key, body in objects.items():  # readable by anyone, as on OpenNeuro: moto refuses anonymous reads otherwise
        s3.put_object(Bucket=OPENNEURO_BUCKET, Key=key, Body=body, ACL="public-read")
    s3.put_object(Bucket=OPENNEURO_BUCKET, Key=PRIVATE_KEY, Body=b"private" * 200)
    return OpenNeuroServer(url, objects, process)


def stop_openneuro_server(server: OpenNeuroServer) -> None:
    server.process.terminate()
    server.process.wait(timeout=10)


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 that passes requests on and can spoil the next responses.

    ``spoil("cut", n)``: the next n object responses (status 200, body longer
    than ``offset``) stop after ``offset`` body bytes and the connection is
    closed; ``spoil("corrupt", n)``: one body byte is flipped;
    ``spoil("unavailable", n)``: a 503 SlowDown error replaces them. ``spoil("pass")``
    lets everything through. ``spoiled`` counts the responses spoiled so far;
    ``sent`` holds every byte clients sent.
    """

    def __init__(self, upstream_url: str, offset: int = 1000):
        host, port = upstream_url.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.offset = offset
        self.mode, self.remaining, self.spoiled = "pass", 0, 0
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def spoil(self, mode: str, count: int = 10**9) -> None:
        with self._lock:
            self.mode, self.remaining = mode, (0 if mode == "pass" else count)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()

    def _take_fault(self) -> str:
        with self._lock:
            if self.remaining > 0:
                self.remaining -= 1
                self.spoiled += 1
                return self.mode
            return "pass"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        threading.Thread(target=self._forward, args=(client, upstream, self.sent), daemon=True).start()
        try:
            self._responses(upstream, client)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    @staticmethod
    def _forward(src: socket.socket, dst: socket.socket, record: bytearray | None = None) -> None:
        try:
            while data := src.recv(65536):
                if record is not None:
                    record += data
                dst.sendall(data)
        except OSError:
            pass

    def _responses(self, upstream: socket.socket, client: socket.socket) -> None:
        """Relay responses one by one (by Content-Length), spoiling some."""
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = upstream.recv(65536)
                if not data:
                    return
                buffer += data
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            head += b"\r\n\r\n"
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            if "content-length" not in headers:  # not framed by length: relay the rest as it is
                client.sendall(head + buffer)
                self._forward(upstream, client)
                return
            length = int(headers["content-length"])
            while len(buffer) < length:
                data = upstream.recv(65536)
                if not data:
                    break
                buffer += data
            body, buffer = buffer[:length], buffer[length:]
            fault = self._take_fault() if lines[0].split()[1] == "200" and length > self.offset else "pass"
            if fault == "cut":
                client.sendall(head + body[: self.offset])
                return
            if fault == "unavailable":
                body = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                head = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body))
            if fault == "corrupt":
                spoilt = io.BytesIO(body)
                spoilt.seek(self.offset)
                spoilt.write(bytes([body[self.offset] ^ 0xFF]))
                body = spoilt.getvalue()
            client.sendall(head + body)

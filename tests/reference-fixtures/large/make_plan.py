"""Plan of a large reference-server database (many namespaces, tokens, conflicts; values
larger than a page; enough pages for B-trees several levels deep and several regions),
written in the reference's table layout. Writes plan.txt for the redb generator and
expected.json with what an import must reproduce. Deterministic (seeded)."""
import hashlib, json, random, sys, uuid

rng = random.Random(23)
lines, expected = [], {"namespaces": {}, "tokens": [], "deleted": [], "conflicts": 0,
                       "devices": 0}


def uid():
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def put(table, key, value: bytes):
    lines.append(f"{table}\t{key}\t{value.hex()}")


def stamp(n):
    return f"2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00.{n % 1000:03d}000000+00:00"


def payload(size):
    seed = rng.randbytes(32)
    return (seed * (size // 32 + 1))[:size - 8] + rng.randbytes(8)


for n in range(600):
    ns = f"user-{n:04d}"
    entry = expected["namespaces"].setdefault(ns, {"objects": {}})
    if n % 3 == 0:  # a snapshot, some larger than a page, a few much larger
        size = rng.choice([200, 3000, 5000, 20000, 70000]) if n % 30 else 300000
        data = payload(size)
        etag = uid()
        meta = {"exists": True, "revision": f"rev-{n}", "etag": etag,
                "contentHash": hashlib.sha256(data).hexdigest(), "uploadedAt": stamp(n),
                "deviceId": f"dev-{n}", "contentLength": size,
                "contentType": "application/vnd.oxideterm.oxide"}
        put("blobs", f"ns:{ns}", data)
        entry["blob"] = {"etag": etag, "sha256": meta["contentHash"], "length": size}
    elif n % 3 == 1:  # a structured sync
        sections = {}
        for s in range(4):
            path = f"structured/section-{s}/{hashlib.sha256(f'{n}/{s}'.encode()).hexdigest()}.json"
            data = json.dumps({"version": 1, "n": n, "s": s, "pad": "x" * rng.randrange(10, 9000)}).encode()
            etag = uid()
            put("objects", f"ns:{ns}/obj:{path}", data)
            put("object_metadata", f"ns:{ns}/obj:{path}",
                json.dumps({"etag": etag, "updatedAt": stamp(n)}, separators=(",", ":")).encode())
            entry["objects"][path] = {"etag": etag, "sha256": hashlib.sha256(data).hexdigest()}
            sections[f"section{s}"] = {"path": path, "revision": str(s)}
        meta = {"exists": True, "format": "structured-v2", "revision": f"rev-{n}", "etag": uid(),
                "uploadedAt": stamp(n), "deviceId": f"dev-{n}", "contentLength": 0,
                "sections": sections}
    else:
        meta = {"exists": False, "contentLength": 0}
    raw = json.dumps(meta, separators=(",", ":"))
    put("metadata", f"ns:{ns}", raw.encode())
    entry["metadata"] = raw
    if n % 60 == 7:
        put("deleted_namespaces", ns, json.dumps({"deletedAt": stamp(n)}).encode())
        expected["deleted"].append(ns)
    lines.append("commit")

for n in range(500):
    raw_token, token_id = uid(), uid()
    digest = hashlib.sha256(raw_token.encode()).hexdigest()
    pattern = rng.choice(["*", f"user-{n:04d}", f"user-{n % 10}*"])
    permissions = rng.choice([["read"], ["read", "write"]])
    token = {"id": token_id, "name": f"token-{n}", "tokenHash": digest,
             "encryptedToken": "", "namespacePattern": pattern, "permissions": permissions,
             "createdAt": stamp(n), "enabled": n % 17 != 0, "readCount": n, "writeCount": 1,
             "failedCount": 0}
    put("tokens", f"tok:{token_id}", json.dumps(token, separators=(",", ":")).encode())
    put("token_hashes", digest, token_id.encode())
    expected["tokens"].append({"id": token_id, "token": raw_token, "pattern": pattern,
                               "permissions": permissions, "enabled": token["enabled"]})
    if n % 10 == 0:
        device = {"id": uid(), "name": f"laptop-{n}", "namespacePattern": pattern,
                  "tokenId": token_id, "enabled": True, "createdAt": stamp(n),
                  "updatedAt": stamp(n), "notes": f"desk {n}"}
        put("devices", f"dev:{device['id']}", json.dumps(device).encode())
        expected["devices"] += 1
    if n % 25 == 24:
        lines.append("commit")

for n in range(800):
    conflict_id = uid()
    record = {"id": conflict_id, "occurredAt": stamp(n), "namespace": f"user-{n % 600:04d}",
              "operation": "blob", "deviceId": f"dev-{n}", "requestedRevision": f"r{n}",
              "requestedEtag": uid(), "remoteEtag": uid(),
              "message": "Remote snapshot changed before upload completed"}
    put("sync_conflicts", f"conflict:{stamp(n)}:{conflict_id}", json.dumps(record).encode())
    expected["conflicts"] += 1

with open(sys.argv[1], "w") as plan:
    plan.write("\n".join(lines) + "\n")
with open(sys.argv[2], "w") as out:
    json.dump(expected, out, indent=1)

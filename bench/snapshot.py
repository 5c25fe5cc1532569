#!/usr/bin/env python3
"""Writes the policy snapshot for bench/sidecar.sh from the keys peers.sh exports.

The policy mirrors HAProxy's in peers.sh: a token from bench-issuer for bench-app, with
exp, allowed when it carries the scope `read` (403 otherwise); the API key and the mTLS
client (CN bench-client) act for users with the viewer role (scope read).
"""
import base64, hashlib, json, os, time

def read(name):
    with open(os.environ[name], "rb") as f:
        return f.read()

b64url = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
api_key = os.environ["API_KEY"]
viewer = lambda name: {"name": name, "email": f"{name}@bench.test", "disabled": False, "roles": ["viewer"], "teams": []}
print(json.dumps({
    "revision": 1,
    "generated_at": now,
    "roles": [{"name": "viewer", "scopes": ["read"]}],
    "users": [viewer("bench-user"), viewer("bench-client")],
    "api_keys": [{
        "key_hash": hashlib.sha256(api_key.encode()).hexdigest(), "prefix": api_key[:8], "namespace": "bench",
        "owner_kind": "user", "owner_name": "bench-user", "scopes": ["read"], "expires_at": None, "revoked_at": None,
    }],
    "sources": [],
    "revoked_sessions": [],
    "policies": [{
        "namespace": "bench", "name": "bench", "pod_selector": {},
        "rules": [{"name": "all", "paths": ["/**"], "requireScopes": ["read"]}],
        "cors": None, "api_versions": None,
    }],
    "jwt_issuers": [{
        "issuer": os.environ["JWT_ISSUER"], "audiences": [os.environ["JWT_AUDIENCE"]], "claims": "token",
        "keys": [
            {"alg": "HS256", "k": b64url(read("JWT_HS256_SECRET_FILE"))},
            {"alg": "RS256", "pem": read("JWT_RS256_PUBLIC_KEY_FILE").decode()},
            {"alg": "ES256", "pem": read("JWT_ES256_PUBLIC_KEY_FILE").decode()},
        ],
    }],
}))

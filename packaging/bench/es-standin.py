#!/usr/bin/env python3
"""A minimal Elasticsearch 8 stand-in for benchmarks: answers GET / like
Elasticsearch 8.15, acknowledges every PUT (templates, policies), and
answers `_bulk` with every `create` item stored (201, or 409 for an id it
already has). GET /_count gives the number of documents stored. Keeps only
ids, so it stays cheap: the benchmark shows its CPU next to the indexer's.

    es-standin.py PORT
"""
import gzip
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ids = set()

ROOT = json.dumps({
    "name": "standin", "cluster_name": "bench", "cluster_uuid": "bench",
    "version": {"number": "8.15.0", "build_flavor": "default"},
    "tagline": "You Know, for Search",
}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return data

    def do_GET(self):
        if self.path.startswith("/_count"):
            self.reply(200, json.dumps({"count": len(ids)}).encode())
        else:
            self.reply(200, ROOT)

    def do_PUT(self):
        self.body()
        self.reply(200, b'{"acknowledged":true}')

    def do_POST(self):
        lines = self.body().split(b"\n")
        items = []
        for action in lines[0::2]:
            if not action.strip():
                continue
            meta = json.loads(action)["create"]
            doc_id = meta["_id"]
            status = 409 if doc_id in ids else 201
            ids.add(doc_id)
            items.append('{"create":{"_index":"%s","_id":"%s","status":%d}}'
                         % (meta.get("_index", "x"), doc_id, status))
        body = '{"took":1,"errors":false,"items":[' + ",".join(items) + "]}"
        self.reply(200, body.encode())


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

"""The plain baseline for the serving benchmark: one model behind a minimal FastAPI app under
uvicorn, one forward pass per request, no batching.

    .venv/bin/python -m benchmarks.plain_server --model DIR --port 8100 [--threads 2]
"""

from __future__ import annotations

import argparse
import threading
import time

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class Body(BaseModel):
    texts: list[str]


def make_app(model_dir: str, max_length: int) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    app = FastAPI()
    # Time spent in the model, as fmstack's replicas report it, so that the benchmark can tell
    # a slower forward pass from a longer request path.
    stats = {"forward_passes": 0, "inference_seconds": 0.0}
    lock = threading.Lock()

    @app.post("/classify")
    def classify(body: Body) -> dict:
        start = time.perf_counter()
        enc = tokenizer(
            body.texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits.float(), -1)
        with lock:
            stats["forward_passes"] += 1
            stats["inference_seconds"] += time.perf_counter() - start
        return {
            "predictions": [
                {"label": labels[int(p.argmax())], "score": float(p.max())} for p in probs
            ]
        }

    @app.get("/stats")
    def read_stats() -> dict:
        with lock:
            return dict(stats)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plain_server")
    parser.add_argument("--model", required=True, help="a Hugging Face classifier directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uvicorn.run(
        make_app(args.model, args.max_length), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()

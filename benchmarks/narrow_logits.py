"""What narrowing the logits saves: one training step (forward, backward, AdamW) of an objective
with `narrow_logits` off and on, in ONE process, alternating step by step on the same batches, so
the machine's drift from minute to minute falls on both alike. Prints each step, the median step
seconds and their ratio, and the size of the logits each setting holds (the step's memory, one
setting per process, is `orpo bench`'s to measure).

    python benchmarks/narrow_logits.py --model smollm2-135m-instruct --method orpo --steps 6

The model is a preset, a local directory, a hub id or a packaged GGUF alias, as in an experiment;
the data is the synthetic suite at `orpo bench`'s lengths and batch (`orpo.bench.DATA`,
`GLOBAL_BATCH`: max_length 48, max_prompt_length 24, 16 pairs). Plain torch on CPU, float32: the step the lab's ZeRO-3 cells also run, without
DeepSpeed's own costs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers.utils import logging as hf_logging

from orpo.bench import DATA, GLOBAL_BATCH
from orpo.data.prepare import tokenizer_corpus
from orpo.data.synthetic import generate_suite
from orpo.data.tokenize import collate_chosen, collate_pairs, encode_pairs
from orpo.models import build_model, is_preset, load_tokenizer, narrows_logits, train_tokenizer
from orpo.sources import materialize
from orpo.training.objectives import OBJECTIVES, Norms, ObjectiveConfig, n_examples, nll_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="orpo", choices=["sft", "orpo", "dpo"])
    parser.add_argument("--steps", type=int, default=6, help="steps per setting, after one warm-up")
    parser.add_argument("--batch", type=int, default=GLOBAL_BATCH, help="pairs per step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()  # the "Loading weights" bar

    suite = generate_suite(n_train=args.batch * (args.steps + 1), n_eval=0, n_test=0, seed=0)
    if is_preset(args.model):
        tokenizer = train_tokenizer(
            tokenizer_corpus(suite["train"]), vocab_size=DATA["tokenizer_vocab_size"]
        )
        source = args.model
    else:
        source = materialize(args.model)
        tokenizer = load_tokenizer(source)
    encoded, _ = encode_pairs(
        tokenizer, suite["train"], DATA["max_length"], DATA["max_prompt_length"]
    )
    collate = collate_chosen if args.method == "sft" else collate_pairs
    batches = [
        collate(encoded[i : i + args.batch], tokenizer.pad_token_id)
        for i in range(0, len(encoded) - args.batch + 1, args.batch)
    ]
    model = build_model(source, tokenizer)
    if not narrows_logits(model):
        raise SystemExit(f"{args.model}: its forward cannot return the scored positions alone")
    models = {False: model, True: copy.deepcopy(model)}
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}
    ref = torch.zeros(args.batch, 2)  # DPO's cached reference log-probs: values do not matter
    seconds: dict[bool, list[float]] = {False: [], True: []}
    shapes: dict[bool, tuple] = {}
    print(
        f"{args.model}, {args.method}, {len(batches) - 1} steps per setting after a warm-up, "
        f"{args.batch} pairs, {torch.get_num_threads()} threads",
        flush=True,
    )
    for step, batch in enumerate(batches):
        for narrow in (False, True) if step % 2 == 0 else (True, False):
            cfg = ObjectiveConfig(
                stage=args.method, orpo_lambda=0.1, dpo_beta=0.1, narrow_logits=narrow
            )
            norms = Norms(
                tokens=nll_tokens(batch, args.method, "response"),
                examples=n_examples(batch, args.method),
            )

            def forward(narrow=narrow, **inputs):
                out = models[narrow](**inputs)
                shapes[narrow] = tuple(out.logits.shape)
                return out

            started = time.perf_counter()
            loss, _ = OBJECTIVES[args.method](forward, batch, norms, cfg, ref)
            loss.backward()
            optims[narrow].step()
            optims[narrow].zero_grad()
            took = time.perf_counter() - started
            if step > 0:  # the first step of each is warm-up
                seconds[narrow].append(took)
            print(f"step {step} narrow={narrow}: {took:.3f} s, logits {shapes[narrow]}", flush=True)
    full, narrow = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"median s/step: every position {full:.3f}, narrowed {narrow:.3f}: {narrow / full:.2f}x")
    for narrow, name in ((False, "every position"), (True, "narrowed")):
        mb = 4 * torch.Size(shapes[narrow]).numel() / 2**20  # float32
        print(f"logits, {name}: {shapes[narrow]}, {mb:,.1f} MB")


if __name__ == "__main__":
    main()

"""What one setting of the training forward saves: one training step (forward, backward, AdamW)
of an objective with the setting off and on, in ONE process, alternating step by step on the same
batches, so the machine's drift from minute to minute falls on both alike. Prints each step, the
median step seconds and their ratio (the step's memory, one setting per process, is `orpo
bench`'s to measure). The settings:
- `narrow-logits`: logits only where a token is scored (`ObjectiveConfig.narrow_logits`); prints
  the size of the logits each side holds;
- `tokens-only-feed-forward`: feed-forward blocks on the real tokens, not the padding
  (`orpo.training.unpadded`, as both engines run them; logits narrowed on both sides where the
  model can); prints how many of the batch's positions are real.

    python benchmarks/step_settings.py --setting narrow-logits --model smollm2-135m-instruct \
        --method orpo --steps 6

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
from orpo.training.unpadded import tokens_only_feed_forward

SETTINGS = ("narrow-logits", "tokens-only-feed-forward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", default="narrow-logits", choices=SETTINGS)
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
    narrowing = args.setting == "narrow-logits"
    can_narrow = narrows_logits(model)
    if narrowing and not can_narrow:
        raise SystemExit(f"{args.model}: its forward cannot return the scored positions alone")
    models = {False: model, True: copy.deepcopy(model)}
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}
    ref = torch.zeros(args.batch, 2)  # DPO's cached reference log-probs: values do not matter
    seconds: dict[bool, list[float]] = {False: [], True: []}
    shapes: dict[bool, tuple] = {}
    print(
        f"{args.setting}: {args.model}, {args.method}, {len(batches) - 1} steps per side after a warm-up, "
        f"{args.batch} pairs, {torch.get_num_threads()} threads",
        flush=True,
    )
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    positions = sum(b["attention_mask"].numel() for b in batches)
    for step, batch in enumerate(batches):
        for on in (False, True) if step % 2 == 0 else (True, False):
            narrow = on if narrowing else can_narrow
            cfg = ObjectiveConfig(
                stage=args.method, orpo_lambda=0.1, dpo_beta=0.1, narrow_logits=narrow
            )
            norms = Norms(
                tokens=nll_tokens(batch, args.method, "response"),
                examples=n_examples(batch, args.method),
            )

            def forward(on=on, **inputs):
                mask = None if narrowing or not on else inputs["attention_mask"]
                with tokens_only_feed_forward(models[on], mask):
                    out = models[on](**inputs)
                shapes[on] = tuple(out.logits.shape)
                return out

            started = time.perf_counter()
            loss, _ = OBJECTIVES[args.method](forward, batch, norms, cfg, ref)
            loss.backward()
            optims[on].step()
            optims[on].zero_grad()
            took = time.perf_counter() - started
            if step > 0:  # the first step of each is warm-up
                seconds[on].append(took)
            print(f"step {step} {args.setting}={on}: {took:.3f} s, logits {shapes[on]}", flush=True)
    off_s, on_s = statistics.median(seconds[False]), statistics.median(seconds[True])
    if narrowing:
        print(
            f"median s/step: every position {off_s:.3f}, narrowed {on_s:.3f}: {on_s / off_s:.2f}x"
        )
        for on, name in ((False, "every position"), (True, "narrowed")):
            mb = 4 * torch.Size(shapes[on]).numel() / 2**20  # float32
            print(f"logits, {name}: {shapes[on]}, {mb:,.1f} MB")
    else:
        print(
            f"median s/step: over the padding {off_s:.3f}, real tokens only {on_s:.3f}: "
            f"{on_s / off_s:.2f}x"
        )
        print(f"real tokens: {real} of {positions} positions ({real / positions:.0%})")


if __name__ == "__main__":
    main()

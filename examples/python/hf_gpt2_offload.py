"""Train a small Hugging Face GPT-2 with strata's OffloadOptimizer.

The model is built from a config (no download) over byte tokens
(vocab_size=256); the data is a fixed byte batch. strata keeps the fp32
master weights and the AdamW states in host memory (--offload cpu)
or in swap files on NVMe (--offload nvme --nvme-path DIR); gradients reach
it through per-parameter hooks during backward.

    python examples/python/hf_gpt2_offload.py --steps 30
    python examples/python/hf_gpt2_offload.py --steps 30 --trainer   # through transformers.Trainer

Prints one line per step ("step N loss X") and the first and last loss.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from strata.torch import OffloadOptimizer

TEXT = (b"strata keeps the fp32 master weights and the optimizer states of a model in "
        b"pinned host memory or on NVMe, and runs the optimizer on the CPU while the "
        b"accelerator runs forward and backward. ")


def make_model(seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
               n_positions: int = 64) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=256,
                        n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def make_batch(batch: int = 8, seq: int = 64) -> torch.Tensor:
    """batch sequences of seq byte tokens, each starting at another offset of TEXT."""
    data = torch.tensor(list(TEXT * (2 + batch * seq // len(TEXT))), dtype=torch.long)
    starts = [(i * 37) % len(TEXT) for i in range(batch)]
    return torch.stack([data[s:s + seq] for s in starts])


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: torch.Tensor, steps: int,
          scheduler=None, log=None) -> list[float]:
    """Plain PyTorch: forward, backward, step, schedule; returns each step's loss."""
    model.train()
    losses = []
    for i in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log is not None:
            log(f"step {i} loss {losses[-1]:.4f}")
    return losses


def warmup(opt: torch.optim.Optimizer, steps: int = 5) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / steps))


def train_with_trainer(model: torch.nn.Module, opt: torch.optim.Optimizer, scheduler,
                       batch: torch.Tensor, steps: int, out_dir: str) -> list[float]:
    """The same run through transformers.Trainer(optimizers=(opt, scheduler))."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(batch)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": batch[i], "labels": batch[i]}

    losses: list[float] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                print(f"step {state.global_step - 1} loss {logs['loss']:.4f}", flush=True)

    args = TrainingArguments(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=len(batch),
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        # strata clips (gradient_clipping=...): the params hold no .grad for
        # the Trainer's own clip_grad_norm_ to see.
        max_grad_norm=0.0, dataloader_drop_last=False, seed=0)
    Trainer(model=model, args=args, train_dataset=Rows(), optimizers=(opt, scheduler),
            callbacks=[Record()]).train()
    return losses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--offload", choices=["cpu", "nvme"], default="cpu")
    ap.add_argument("--nvme-path", default=None)
    ap.add_argument("--trainer", action="store_true", help="train through transformers.Trainer")
    ap.add_argument("--out-dir", default=None, help="Trainer's output_dir (default: a temp dir)")
    a = ap.parse_args(argv)

    model = make_model()
    opt = OffloadOptimizer(model.parameters(), lr=a.lr, weight_decay=0.01, offload=a.offload,
                           nvme_path=a.nvme_path, gradient_clipping=1.0)
    scheduler = warmup(opt)
    batch = make_batch()
    start = time.perf_counter()
    if a.trainer:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            losses = train_with_trainer(model, opt, scheduler, batch, a.steps, a.out_dir or tmp)
    else:
        losses = train(model, opt, batch, a.steps, scheduler, log=lambda s: print(s, flush=True))
    seconds = time.perf_counter() - start
    print(f"first loss {losses[0]:.4f} last loss {losses[-1]:.4f} "
          f"({len(losses)} steps, {1e3 * seconds / max(1, len(losses)):.1f} ms/step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

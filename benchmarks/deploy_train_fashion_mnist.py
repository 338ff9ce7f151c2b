"""Train a small Fashion-MNIST classifier to measure what int8 quantization costs in accuracy.

    .venv/bin/python benchmarks/deploy_train_fashion_mnist.py mobilenet_v2 --epochs 1 --train-limit 24000 \
        --size 32 --out ckpt.safetensors

Deliberately short (not the training recipe of src/mobilenets/train): AdamW with one-cycle LR, flips, batch 128,
channels_last. The checkpoint is a normal mobilenets checkpoint (Preprocessing: 1 channel, SIZE x SIZE,
Fashion-MNIST mean/std), so `mobilenets export --int8 --calibration-data fashion-mnist --accuracy` reads it.
"""
import argparse
import logging
import time

import torch
import torch.nn.functional as F

import mobilenets
from mobilenets.checkpoint import CheckpointMeta, Preprocessing, save_checkpoint
from mobilenets.data.fashion_mnist import CLASS_NAMES, MEAN, STD, load_fashion_mnist


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (--epochs 0: only re-estimate BN)")
    p.add_argument("--bn-batches", type=int, default=40, help="batches for the final BN statistics (precise BN)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    pre = Preprocessing(input_size=(1, args.size, args.size), resize=args.size, mean=(MEAN,), std=(STD,))
    x_train, y_train, _ = load_fashion_mnist("train")
    x_test, y_test, _ = load_fashion_mnist("test")
    if args.train_limit:
        x_train, y_train = x_train[:args.train_limit], y_train[:args.train_limit]

    def prep(x):  # uint8 (N, 28, 28) -> normalized (N, 1, S, S), as mobilenets.data.samples does
        x = x.unsqueeze(1).float().div_(255)
        x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", antialias=True, align_corners=False)
        return (x - MEAN) / STD

    model = mobilenets.create_model(args.model, num_classes=10, in_chans=1).to(memory_format=torch.channels_last)
    if args.init:
        mobilenets.load_weights(model, args.init)
    steps = max(1, args.epochs * (len(x_train) // args.batch))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        for i in range(0, len(perm) - args.batch + 1, args.batch):
            idx = perm[i:i + args.batch]
            x = prep(x_train[idx])
            flip = torch.rand(len(x)) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y_train[idx],
                                   label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                logging.info("epoch %d step %d/%d loss %.3f (%.0f img/s)", epoch, step, steps, loss.item(),
                             step * args.batch / (time.time() - t0))
    # Precise BN: with V3's TF-style BN momentum (0.01) a short run leaves the running statistics far from the
    # final weights' (V3-Large evaluated at 10% without this); re-estimate them as a plain average.
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        perm = torch.randperm(len(x_train))
        for i in range(args.bn_batches):
            model(prep(x_train[perm[i * args.batch:(i + 1) * args.batch]]).contiguous(memory_format=torch.channels_last))
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x_test), 500):
            correct += int((model(prep(x_test[i:i + 500])).argmax(1) == y_test[i:i + 500]).sum())
    acc = correct / len(x_test)
    logging.info("test accuracy %.4f", acc)
    meta = CheckpointMeta(model=args.model, options={"num_classes": 10, "in_chans": 1}, class_names=list(CLASS_NAMES),
                          preprocessing=pre, extra={"test_accuracy": acc, "epochs": args.epochs,
                                                    "train_images": len(x_train),
                                                    "script": "benchmarks/deploy_train_fashion_mnist.py"})
    save_checkpoint(args.out, model.to(memory_format=torch.contiguous_format), meta)


if __name__ == "__main__":
    main()

"""Weight decay collapses weight spectra and drives neural collapse: a small MLP on scikit-learn's digits.

Trains the same 64-256-256-128-10 ReLU MLP (plain torch, SGD with momentum and a cosine schedule,
one CPU thread, about 5 s per run) at increasing weight decay and shows, with rankscope:

- the weight spectra of every Linear layer (``rankscope.svdvals``) and the scanner's rank loss and
  relative smallest singular value (``rankscope.scan(model)``: ``rank_loss``, ``log10_sv_min_rel``):
  weight decay shrinks every direction the loss does not defend, so small singular values fall by
  orders of magnitude and the matrices lose numerical rank;
- neural collapse of the penultimate features on the training set
  (``rankscope.neural_collapse.NeuralCollapse``, two passes, with the classifier for NC3/NC4), and
  the class-mean ranks and NC1 through the depth (``deep_neural_collapse``, before and after each
  ReLU). Moderate weight decay strengthens neural collapse: at 1e-3 NC1 halves and NC3 falls 3×;
  at 1e-2 NC3 falls 6× while NC1 already rises again (5× its value without decay); 5e-2 no longer
  fits the training set (train accuracy 0.97) and the collapse comes undone (NC1 30×), while the
  weights keep losing rank (188 of fc2's 256 singular values).

The loss is the squared error on one-hot targets by default (Han, Papyan & Donoho 2022, "Neural
collapse under MSE loss"): on a problem this small it reaches the terminal phase within the
budget (NC1 ≈ 2e-3 at weight decay 1e-3), while cross-entropy (``--loss ce``) stops near NC1 ≈ 0.2
after 300 epochs. The weight-spectrum collapse looks the same with either loss.

Run:  python examples/weight_decay_collapse.py [--out FILE.png] [--epochs 300] [--loss mse|ce]
It prints a table and writes one PNG figure (default: weight_decay_collapse.png next to this file),
in about 20 s. The numbers above are seed 0 on a 2-core Intel Xeon (the README's benchmark machine);
training repeats exactly on one CPU but not across CPU models (an AMD EPYC loses 189 of fc2's 256,
and 1 at weight decay 1e-3), the same picture otherwise.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import rankscope as rs
import torch
from rankscope.neural_collapse import NeuralCollapse, deep_neural_collapse
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 5e-2)
WIDTHS = (64, 256, 256, 128, 10)


def make_model() -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def data(seed: int):
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    xtr, xte, ytr, yte = train_test_split(x, digits.target, test_size=0.2, random_state=seed,
                                          stratify=digits.target)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte),
            torch.from_numpy(yte).long())


def train(wd: float, xtr, ytr, epochs: int, seed: int, loss: str = "mse") -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    onehot = torch.nn.functional.one_hot(ytr, WIDTHS[-1]).float()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 128):
            idx = perm[i:i + 128]
            opt.zero_grad(set_to_none=True)
            out = model(xtr[idx])
            if loss == "mse":
                err = ((out - onehot[idx]) ** 2).sum(1).mean()
            else:
                err = torch.nn.functional.cross_entropy(out, ytr[idx])
            err.backward()
            opt.step()
        sched.step()
    return model.eval()


def hidden_features(model: torch.nn.Sequential, x: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """(pre-ReLU, post-ReLU) features of each hidden layer."""
    out, h = [], x
    with torch.no_grad():
        for i in range(0, len(model) - 1, 2):
            pre = model[i](h)
            h = model[i + 1](pre)
            out.append((pre.double().numpy(), h.double().numpy()))
    return out


def analyse(model, xtr, ytr, xte, yte) -> dict:
    report = rs.scan(model, progress=False)
    weights = report.scanned.reset_index(drop=True)
    spectra = [np.asarray(rs.svdvals(m.weight.detach())) for m in model if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        acc_tr = (model(xtr).argmax(1) == ytr).float().mean().item()
        acc_te = (model(xte).argmax(1) == yte).float().mean().item()
    layers = hidden_features(model, xtr)
    penult = torch.from_numpy(layers[-1][1])  # the classifier's input
    head = model[-1]
    nc = NeuralCollapse(10, penult.shape[1], passes=2, W=head.weight.detach(), b=head.bias.detach())
    for _ in range(2):  # the loader would be iterated twice; here: the training set in batches
        for i in range(0, len(penult), 256):
            nc.update(penult[i:i + 256], ytr[i:i + 256])
        if nc.current_pass == 1:
            nc.start_second_pass()
    ncm = {k: float(v) for k, v in nc.compute().items()}
    means = nc.class_means()
    mean_sv = np.asarray(rs.svdvals(means - means.mean(0)))  # the centred class means M̃ (K × d)
    deep = deep_neural_collapse(layers, ytr, names=[f"fc{i + 1}" for i in range(len(layers))])
    return {"weights": weights, "spectra": spectra, "acc_tr": acc_tr, "acc_te": acc_te, "nc": ncm, "deep": deep,
            "mean_sv": mean_sv}


def plot(results: dict, path: str, loss: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wds = list(results)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(wds)))
    names = ["fc1", "fc2", "fc3", "head"]  # the Linear layers, in order (the scan names them 0, 2, 4, 6)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    fig.suptitle(f"MLP 64-256-256-128-10 on sklearn digits ({loss} loss, SGD): weight decay collapses "
                 "the weight spectra, and moderate weight decay strengthens neural collapse", fontsize=13)

    ax = axes[0, 0]
    for wd, c in zip(wds, colors):
        for j, (s, ls) in enumerate(zip(results[wd]["spectra"], ("-", "--", ":", "-."))):
            ax.semilogy(np.arange(1, len(s) + 1), s / s[0], ls, color=c, lw=1.4,
                        label=f"wd={wd:g}" if j == 0 else None)
    tol = 256 * np.finfo(np.float32).eps
    ax.axhline(tol, color="gray", lw=0.8, ls="--")
    ax.text(130, tol / 30, "rank tolerance 256·eps32", fontsize=8, color="gray")
    ax.set_ylim(1e-30, 3)
    ax.set_title("(a) weight spectra s_i / s_1 of every Linear (zeros off the bottom)\n"
                 "line style: fc1 -, fc2 --, fc3 :, head -.")
    ax.set_xlabel("index i")
    ax.set_ylabel("s_i / s_1 (log)")
    ax.legend(fontsize=8)

    x = np.arange(len(names))
    width = 0.8 / len(wds)
    ax = axes[0, 1]
    for k, (wd, c) in enumerate(zip(wds, colors)):
        ax.bar(x + (k - (len(wds) - 1) / 2) * width, results[wd]["weights"]["rank_loss"], width, color=c,
               label=f"wd={wd:g}")
    ax.set_xticks(x, names)
    ax.set_title("(b) rank loss (rankscope.scan): min(m, n) − numerical rank")
    ax.set_ylabel("rank_loss")
    ax.legend(fontsize=8)

    ax = axes[0, 2]
    for k, (wd, c) in enumerate(zip(wds, colors)):
        ax.bar(x + (k - (len(wds) - 1) / 2) * width, results[wd]["weights"]["log10_sv_min_rel"], width,
               color=c, label=f"wd={wd:g}")
    ax.set_xticks(x, names)
    ax.set_title("(c) log10(s_min / s_max) per layer (rankscope.scan)")
    ax.set_ylabel("log10_sv_min_rel")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    keys = [("nc1", "NC1 tr(Σ_W Σ_B⁺)/K"), ("nc2_etf_error", "NC2 ETF error"), ("nc3", "NC3 (W vs M̃)"),
            ("cdnv", "CDNV")]
    xw = np.arange(len(wds))
    for key, label in keys:
        ax.semilogy(xw, [results[wd]["nc"][key] for wd in wds], "o-", label=label)
    ax.set_xticks(xw, [f"{wd:g}" for wd in wds])
    ax.set_xlabel("weight decay")
    ax.set_title("(d) neural collapse of the penultimate features\n(train set, NeuralCollapse; lower = more collapsed)")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    for wd, c in zip(wds, colors):
        deep = results[wd]["deep"]
        post = deep[deep["stage"] == "post"]
        ax.semilogy(post["layer"], post["nc1"], "o-", color=c, label=f"wd={wd:g}")
    ax.set_title("(e) NC1 through the depth (after each ReLU)")
    ax.set_xlabel("hidden layer")
    ax.set_ylabel("NC1")
    ax.legend(fontsize=8)

    ax = axes[1, 2]
    for wd, c in zip(wds, colors):
        sv = results[wd]["mean_sv"]
        rank = int(results[wd]["nc"]["class_mean_rank_centered"])
        ax.plot(np.arange(1, len(sv)), sv[:-1] / sv[0], "o-", color=c,
                label=f"wd={wd:g}: rank {rank}, s_10/s_1 = {sv[-1] / sv[0]:.0e}")
    ax.set_xticks(np.arange(1, 10))
    ax.set_ylim(0, 1.05)
    ax.set_title("(f) singular values of the centred class means M̃\n"
                 "(penultimate; a simplex ETF has 9 equal values)")
    ax.set_xlabel("index i")
    ax.set_ylabel("s_i / s_1")
    ax.legend(fontsize=8, loc="lower left")

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".png")))
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss", choices=("mse", "ce"), default="mse")
    args = ap.parse_args()
    # A small model: one thread is fastest and steady under load. Weight decay drives weights into
    # float32's subnormal range, where the CPU slows down ~10x: flush them to zero.
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    xtr, ytr, xte, yte = data(args.seed)
    results = {}
    t0 = time.perf_counter()
    for wd in WEIGHT_DECAYS:
        t = time.perf_counter()
        model = train(wd, xtr, ytr, args.epochs, args.seed, args.loss)
        results[wd] = analyse(model, xtr, ytr, xte, yte)
        print(f"weight decay {wd:g}: trained and analysed in {time.perf_counter() - t:.1f} s")
    print()
    header = (f"{'wd':>6} {'train':>6} {'test':>6} {'rank_loss':>16} {'log10 smin rel (min)':>21} {'NC1':>9} "
              f"{'NC2 ETF':>8} {'NC3':>8} {'NC4':>7} {'rank M, M̃':>10}")
    print(header)
    for wd, r in results.items():
        w, n = r["weights"], r["nc"]
        print(f"{wd:>6g} {r['acc_tr']:>6.3f} {r['acc_te']:>6.3f} {list(w['rank_loss'].astype(int))!s:>16} "
              f"{w['log10_sv_min_rel'].min():>21.2f} {n['nc1']:>9.2e} {n['nc2_etf_error']:>8.3f} {n['nc3']:>8.3f} "
              f"{n['nc4']:>7.4f} {int(n['class_mean_rank']):>6d}, {int(n['class_mean_rank_centered']):d}")
    plot(results, args.out, args.loss.upper())
    print(f"\nwrote {args.out} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()

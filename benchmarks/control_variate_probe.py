"""Would a control variate buy precision? The paired per-draw values with and without their linear term.

    python benchmarks/control_variate_probe.py checkpoints/demo

Per-draw value v_t = nbeta (L_{B_t}(w_t) - L_{B_t}(w*)). Its first-order part nbeta g_{B_t}(w*) . (w_t - w*)
carries the minibatch gradient noise; c_t = nbeta (g_{B_t}(w*) - gbar_t) . (w_t - w*), with gbar_t the mean
batch gradient at w* over steps >= t (independent of w_t, so E[c_t] = 0), is a control variate. Printed per
head (demo's last checkpoint, `train` batches of 8, eps 1e-3, nbeta 30, gamma 200, 2 chains x 200 draws after
7 burn-in steps): mean, per-draw sd and the MCSE (ArviZ, autocorrelation included) of v, v - c, and
v - nbeta g_t . delta_t (biased unless the mean gradient at w* is 0; shown as the most it could give).
"""
import sys
import math, time, torch, numpy as np
from rllc.models.checkpoints import load_checkpoints
from rllc.runs.datasets import resolve_dataset
from rllc.models.components import resolve_component
from rllc.sampling import ProjectedSGLD, SGLDSettings, next_token_loss, mcse_mean
torch.set_num_threads(2)
series = load_checkpoints(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/demo"); model = series[series.steps[-1]]
T, B, C = 200, 7, 2
batches = list(resolve_dataset("train", series, batch_size=8, seed=5).batches(T + B))
s = SGLDSettings(epsilon=1e-3, nbeta=30.0, gamma=200.0)
for head in ("1:6", "0:1", "1:3"):
    comp = resolve_component(model, head)
    params = dict(model.named_parameters())
    def grad_at_wstar(batch):
        model.zero_grad()
        for p in model.parameters(): p.requires_grad_(True)
        loss = next_token_loss(model, batch)
        loss.backward()
        g = torch.cat([params[n].grad[i].flatten() for n, i in comp.entries]).double()
        model.zero_grad()
        return float(loss.detach()), g
    ref, G = zip(*[grad_at_wstar(b) for b in batches])
    G = torch.stack(G)  # [steps, d]
    suffix = torch.flip(torch.cumsum(torch.flip(G, [0]), 0), [0]) / torch.arange(len(G), 0, -1)[:, None]
    v = np.zeros((C, T)); c = np.zeros((C, T)); c0 = np.zeros((C, T))
    t0 = time.time()
    with ProjectedSGLD(model, comp, next_token_loss, settings=s, chain_seeds=[11, 12]) as k:
        wstar = torch.cat([w.flatten() for w in k.w_star]).double()
        for t in range(T + B):
            for ch in range(C):
                delta = torch.cat([w.flatten() for w in k.block.coordinates(ch)]).double() - wstar
                info = k.step(ch, batches[t], loss_offset=ref[t])
                if t >= B:
                    v[ch, t - B] = s.nbeta * (info.loss - ref[t])
                    c[ch, t - B] = s.nbeta * float((G[t] - suffix[t]) @ delta)
                    c0[ch, t - B] = s.nbeta * float(G[t] @ delta)
    for name, x in (("paired", v), ("cv (suffix mean)", v - c), ("cv (g_t only)", v - c0)):
        print(f"{head} {name:18s} mean {x.mean():7.4f} draw sd {x.std():.4f} mcse {mcse_mean(x):.4f}")
    print(f"  |g_t| {G.norm(dim=1).mean():.4f}  |mean g| {G.mean(0).norm():.4f}  {time.time()-t0:.0f}s", flush=True)

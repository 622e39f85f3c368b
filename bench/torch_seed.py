"""PyTorch peers for `npm run bench` (never part of the tests).

1. The seed's CalibrationAfmoeMoE.forward (calibrate_all_experts=True), eager mode, with a
   Hessian-accumulating forward pre-hook on every expert Linear, as llm-compressor's GPTQ
   modifier runs it (one expert at a time).
2. GPTQ of every expert Linear, one Linear at a time (llm-compressor's quantize_weight:
   int4 symmetric, group 128, static activation order, dampening 0.01, blocks of 128).

Reads the block and input written by bench (manifest.json of raw float32 files) and prints
JSON: {"calib_seconds" (second pass), "calib_seconds_cold" (first), "tokens", "gptq_seconds", "linears"}.
"""
import json
import os
import sys
import time

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("MOECAL_THREADS", os.cpu_count() or 1)))


def load(d, m, name):
    t = m["tensors"][name]
    return torch.from_numpy(np.fromfile(os.path.join(d, t["file"]), dtype=np.float32).reshape(t["shape"]))


class MLP(torch.nn.Module):
    def __init__(self, h, i):
        super().__init__()
        self.gate_proj = torch.nn.Linear(h, i, bias=False)
        self.up_proj = torch.nn.Linear(h, i, bias=False)
        self.down_proj = torch.nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(torch.nn.Module):
    def __init__(self, h, e, k, route_scale):
        super().__init__()
        self.gate = torch.nn.Linear(h, e, bias=False)
        self.k = k
        self.route_scale = route_scale

    def forward(self, hidden, expert_bias):
        x = hidden.view(-1, hidden.shape[-1])
        scores = torch.sigmoid(self.gate(x).float())
        _, selected = torch.topk(scores + expert_bias, self.k, dim=-1)
        top = scores.gather(1, selected)
        top = top / (top.sum(dim=-1, keepdim=True) + 1e-20)
        return top * self.route_scale, selected


class CalibrationAfmoeMoE(torch.nn.Module):
    """The seed's forward, unchanged in substance (../shared/seed)."""

    def __init__(self, cfg, calibrate_all_experts=True):
        super().__init__()
        h, e, k, i = cfg["hidden"], cfg["experts"], cfg["topk"], cfg["im"]
        self.num_experts = e
        self.router = Router(h, e, k, cfg["route_scale"])
        self.experts = torch.nn.ModuleList([MLP(h, i) for _ in range(e)])
        self.shared_experts = MLP(h, i)
        self.expert_bias = torch.zeros(e)
        self.calibrate_all_experts = calibrate_all_experts

    def forward(self, hidden_states):
        batch_size, seq_len, hidden_dim = hidden_states.shape
        hidden_states_flat = hidden_states.view(-1, hidden_dim)
        top_scores, selected_experts = self.router(hidden_states, self.expert_bias)
        shared_output = self.shared_experts(hidden_states_flat)
        expert_mask = torch.nn.functional.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        routed_output = torch.zeros_like(hidden_states_flat)
        for expert_idx, expert in enumerate(self.experts):
            idx, token_idx = torch.where(expert_mask[expert_idx])
            if self.calibrate_all_experts:
                expert_output = expert(hidden_states_flat)[token_idx]
            else:
                expert_output = expert(hidden_states_flat[token_idx])
            if len(token_idx) > 0:
                weighted_output = expert_output * top_scores[token_idx, idx, None]
                routed_output.index_add_(0, token_idx, weighted_output.to(hidden_states.dtype))
        output = shared_output + routed_output
        return output.view(batch_size, seq_len, hidden_dim)


class CalibrationSoftmaxMoE(torch.nn.Module):
    """llm-compressor's CalibrationQwen3MoeSparseMoeBlock forward (calibrate_all_experts=True): softmax
    router over all experts, top-k, renormalised; no shared expert, no expert bias."""

    def __init__(self, cfg):
        super().__init__()
        h, e, k, i = cfg["hidden"], cfg["experts"], cfg["topk"], cfg["im"]
        self.num_experts, self.top_k, self.norm_topk_prob = e, k, cfg.get("renormalize", True)
        self.gate = torch.nn.Linear(h, e, bias=False)
        self.experts = torch.nn.ModuleList([MLP(h, i) for _ in range(e)])

    def forward(self, hidden_states):
        batch_size, seq_len, hidden_dim = hidden_states.shape
        x = hidden_states.view(-1, hidden_dim)
        routing_weights = torch.nn.functional.softmax(self.gate(x), dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.norm_topk_prob:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        expert_mask = torch.nn.functional.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        out = torch.zeros_like(x)
        for expert_idx, expert in enumerate(self.experts):
            idx, token_idx = torch.where(expert_mask[expert_idx])
            expert_output = expert(x)[token_idx]
            if len(token_idx) > 0:
                out.index_add_(0, token_idx, expert_output * routing_weights[token_idx, idx, None])
        return out.view(batch_size, seq_len, hidden_dim)


def gptq(W, H, group=128, bits=4, blocksize=128, percdamp=0.01):
    """llm-compressor's quantize_weight for int symmetric group quantization, actorder static."""
    W = W.clone().float()
    H = H.clone()
    rows, cols = W.shape
    qmax = 2 ** (bits - 1) - 1
    qmin = -(2 ** (bits - 1))
    g = W.view(rows, cols // group, group)
    amax = torch.maximum(g.amax(dim=2).clamp(min=0), (-g.amin(dim=2)).clamp(min=0))
    scale = (amax / ((qmax - qmin) / 2)).to(torch.bfloat16).float()
    scale[scale == 0] = torch.finfo(torch.float32).eps
    perm = torch.argsort(torch.diag(H), descending=True)
    W = W[:, perm]
    H = H[perm][:, perm]
    g_idx = perm // group
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(cols)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            s = scale[:, g_idx[i1 + i]]
            q = torch.clamp(torch.round(w / s), qmin, qmax) * s
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q[:, torch.argsort(perm)]


def main():
    manifest = sys.argv[1]
    d = os.path.dirname(manifest)
    m = json.load(open(manifest))
    cfg = m["config"]
    softmax = cfg.get("router") == "softmax"
    block = CalibrationSoftmaxMoE(cfg) if softmax else CalibrationAfmoeMoE(cfg)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(load(d, m, name))
        if not softmax:
            block.expert_bias = load(d, m, "expert_bias")
        x = load(d, m, "x")
    hessians = {}

    def hook_for(name, lin):
        H = torch.zeros(lin.in_features, lin.in_features)
        hessians[name] = [H, 0]

        def hook(_m, args):
            inp = args[0].reshape(-1, args[0].shape[-1]).float()
            n = inp.shape[0]
            st = hessians[name]
            st[0] *= st[1] / (st[1] + n) if st[1] + n > 0 else 0
            st[1] += n
            if n > 0:
                inp = (2 / st[1]) ** 0.5 * inp
                st[0] += inp.t() @ inp

        return hook

    for name, mod in block.named_modules():
        if name.startswith("experts.") and isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(hook_for(name, mod))
    with torch.no_grad():
        # twice, as the TypeScript side: the first pass cold, the second warm (the hooks' running
        # averages are the same after two passes over the same input)
        t0 = time.perf_counter()
        block(x)
        calib_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        block(x)
        calib = time.perf_counter() - t0
        t1 = time.perf_counter()
        n = 0
        for name, mod in block.named_modules():
            if cfg.get("gptq", True) and name.startswith("experts.") and isinstance(mod, torch.nn.Linear):
                gptq(mod.weight, hessians[name][0])
                n += 1
        gptq_s = time.perf_counter() - t1
    print(json.dumps({"calib_seconds": calib, "calib_seconds_cold": calib_cold, "tokens": int(x.shape[0] * x.shape[1]), "gptq_seconds": gptq_s, "linears": n, "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()

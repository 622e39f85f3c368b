import {
  type Engine,
  checkAttention,
  checkGram,
  checkLinear,
  checkMatmul,
  checkOut,
  checkRmsNorm,
  checkSigmoidGate,
  checkSubtractProduct,
  checkSwiglu,
  checkSwigluExpert,
  type SwigluExpertOut,
} from "./engine.js";
import { rmsNorm, sigmoidScalar, swiglu } from "./ops.js";
import { Tensor, numel } from "./tensor.js";

/**
 * Plain TypeScript matrix products, accumulated in float64 per output. Slow but obviously
 * right: the reference every fast path is tested against.
 */
export class ReferenceEngine implements Engine {
  readonly name = "reference";

  async linear(x: Tensor, w: Tensor, into?: Float32Array): Promise<Tensor> {
    const { m, k, n } = checkLinear(x, w);
    const out = checkOut(into, m * n);
    const xd = x.data;
    const wd = w.data;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += (xd[i * k + p] as number) * (wd[j * k + p] as number);
        out[i * n + j] = s;
      }
    }
    return new Tensor(out, [m, n]);
  }

  async matmul(a: Tensor, b: Tensor, into?: Float32Array): Promise<Tensor> {
    const { batch, m, k, n } = checkMatmul(a, b);
    const nb = numel(batch);
    const out = checkOut(into, nb * m * n);
    const acc = new Float64Array(n);
    for (let bi = 0; bi < nb; bi++) {
      const ao = bi * m * k;
      const bo = bi * k * n;
      const oo = bi * m * n;
      for (let i = 0; i < m; i++) {
        acc.fill(0);
        for (let p = 0; p < k; p++) {
          const av = a.data[ao + i * k + p] as number;
          const brow = bo + p * n;
          for (let j = 0; j < n; j++) acc[j] = (acc[j] as number) + av * (b.data[brow + j] as number);
        }
        for (let j = 0; j < n; j++) out[oo + i * n + j] = acc[j] as number;
      }
    }
    return new Tensor(out, [...batch, m, n]);
  }

  async rmsNorm(x: Tensor, weight: Tensor, eps: number, into?: Float32Array): Promise<Tensor> {
    checkRmsNorm(x, weight);
    return rmsNorm(x, weight, eps, checkOut(into, x.size));
  }

  async sigmoidGate(x: Tensor, gate: Tensor, into?: Float32Array): Promise<Tensor> {
    const out = checkOut(into, checkSigmoidGate(x, gate));
    for (let i = 0; i < out.length; i++) out[i] = (x.data[i] as number) * sigmoidScalar(gate.data[i] as number);
    return new Tensor(out, x.shape);
  }

  async swiglu(gate: Tensor, up: Tensor, into?: Float32Array): Promise<Tensor> {
    return swiglu(gate, up, checkOut(into, checkSwiglu(gate, up)));
  }

  async subtractProduct(c: Tensor, a: Tensor, b: Tensor): Promise<void> {
    const { m, n } = checkSubtractProduct(c, a, b);
    const p = await this.matmul(a, b);
    for (let i = 0; i < m * n; i++) c.data[i] = (c.data[i] as number) - (p.data[i] as number);
  }

  async swigluExpert(x: Tensor, wGate: Tensor, wUp: Tensor, out: SwigluExpertOut): Promise<Tensor> {
    const { m, i } = checkSwigluExpert(x, wGate, wUp, out);
    const a = new Tensor(swiglu(await this.linear(x, wGate), await this.linear(x, wUp), out.act).data, [m, i]);
    if (out.gram && out.addGram) {
      const g = (await this.gram(a)).data;
      for (let j = 0; j < g.length; j++) out.gram[j] = (out.gram[j] as number) + (g[j] as number);
    } else if (out.gram) await this.gram(a, out.gram);
    if (out.down) await this.linear(a, out.down.weight, out.down.out);
    return a;
  }

  async attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: number, into?: Float32Array): Promise<Tensor> {
    const { m, s, dv } = checkAttention(q, k, v, mask);
    const d = q.dim(1);
    const out = checkOut(into, m * dv);
    const p = new Float64Array(s);
    const acc = new Float64Array(dv);
    for (let i = 0; i < m; i++) {
      let max = -Infinity;
      for (let j = 0; j < s; j++) {
        let dot = 0;
        for (let c = 0; c < d; c++) dot += (q.data[i * d + c] as number) * (k.data[j * d + c] as number);
        p[j] = dot * scale + (mask.data[i * s + j] as number);
        max = Math.max(max, p[j] as number);
      }
      let sum = 0;
      for (let j = 0; j < s; j++) {
        p[j] = Math.exp((p[j] as number) - max);
        sum += p[j] as number;
      }
      acc.fill(0);
      for (let j = 0; j < s; j++)
        for (let c = 0; c < dv; c++) acc[c] = (acc[c] as number) + ((p[j] as number) / sum) * (v.data[j * dv + c] as number);
      out.set(acc, i * dv);
    }
    return new Tensor(out, [m, dv]);
  }

  async gram(x: Tensor, into?: Float32Array): Promise<Tensor> {
    const { m, k } = checkGram(x);
    const out = checkOut(into, k * k);
    for (let i = 0; i < k; i++) {
      for (let j = i; j < k; j++) {
        let s = 0;
        for (let r = 0; r < m; r++) s += (x.data[r * k + i] as number) * (x.data[r * k + j] as number);
        out[i * k + j] = s;
        out[j * k + i] = s;
      }
    }
    return new Tensor(out, [k, k]);
  }
}

import os from "node:os";
import { native } from "../util/interrupt.js";
import * as ort from "onnxruntime-node";
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
import { Tensor, numel } from "./tensor.js";
import { giveBuffer, takeFloats } from "./scratch.js";
import { type NodeSpec, type ValueSpec, encodeModel } from "./onnx-proto.js";

// onnxruntime (since 1.29) starts a telemetry client with its first session, which writes
// $TMPDIR/.ses and $TMPDIR/mat-debug-<pid>.log: files outside the folders a run names. Its
// ORT_DISABLE_TELEMETRY switch, read when the first session is made, turns it off (a user's own
// setting is kept).
process.env.ORT_DISABLE_TELEMETRY ??= "1";

/** Number of intra-op threads: MOECAL_THREADS, else every core. */
export function engineThreads(): number {
  const env = Number(process.env.MOECAL_THREADS);
  return Number.isInteger(env) && env > 0 ? env : os.availableParallelism();
}

const ONE = new Float32Array([1]);

/** Rows of the left operand per onnxruntime call for 2-D products. */
const ROW_CHUNK = 1024;

/** Attention scores per session run at most (floats of each [rows, S] intermediate: 16 MB). */
const ATTENTION_SCORES = 1 << 22;

interface OpSpec {
  nodes: NodeSpec[];
  inputs: ValueSpec[];
  outputs: ValueSpec[];
}

function sym(prefix: string, rank: number): string[] {
  return Array.from({ length: rank }, (_, i) => `${prefix}${i}`);
}

/**
 * Matrix products on onnxruntime's CPU execution provider. One session per operation
 * signature (op and rank), with symbolic dimensions, created once and cached.
 */
export class OrtEngine implements Engine {
  readonly name = "onnxruntime";
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();
  private readonly threads: number;

  constructor(threads = engineThreads()) {
    this.threads = threads;
  }

  private session(key: string, spec: () => OpSpec): Promise<ort.InferenceSession> {
    let s = this.sessions.get(key);
    if (!s) {
      const { nodes, inputs, outputs } = spec();
      const model = encodeModel(key, nodes, inputs, outputs);
      s = ort.InferenceSession.create(model, {
        executionProviders: ["cpu"],
        intraOpNumThreads: this.threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: "all",
        // idle pool threads sleep instead of spinning: the JavaScript thread needs the core between calls
        extra: { session: { intra_op: { allow_spinning: "0" } } },
      });
      this.sessions.set(key, s);
    }
    return s;
  }

  private async run(
    session: ort.InferenceSession,
    feeds: Record<string, Tensor>,
    outShape: number[],
    out: Float32Array = new Float32Array(numel(outShape)),
  ): Promise<Tensor> {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = new ort.Tensor("float32", t.data, [...t.shape]);
    await native(() => session.run(ortFeeds, { Y: new ort.Tensor("float32", out, outShape) }));
    return new Tensor(out, outShape);
  }

  /**
   * Row-chunked 2-D product: MLAS runs far below peak on very tall operands (docs/performance.md,
   * "Measurements behind the code"), so tall left operands go through in chunks that write
   * straight into their rows of the output.
   */
  private async rowChunked(
    session: ort.InferenceSession,
    left: { name: string; t: Tensor },
    right: { name: string; t: Tensor },
    n: number,
    into?: Float32Array,
  ): Promise<Tensor> {
    const [m, k] = [left.t.dim(0), left.t.dim(1)];
    const out = checkOut(into, m * n);
    for (let r0 = 0; r0 < m; r0 += ROW_CHUNK) {
      const r1 = Math.min(m, r0 + ROW_CHUNK);
      const chunk = new Tensor(left.t.data.subarray(r0 * k, r1 * k), [r1 - r0, k]);
      await this.run(session, { [left.name]: chunk, [right.name]: right.t }, [r1 - r0, n], out.subarray(r0 * n, r1 * n));
    }
    return new Tensor(out, [m, n]);
  }

  async linear(x: Tensor, w: Tensor, into?: Float32Array): Promise<Tensor> {
    const { m, n } = checkLinear(x, w);
    if (m === 0 || n === 0 || x.dim(1) === 0) return new Tensor(checkOut(into, m * n).fill(0), [m, n]);
    const s = await this.session("linear", () => ({
      nodes: [{ opType: "Gemm", inputs: ["X", "W"], outputs: ["Y"], intAttributes: { transB: 1 } }],
      inputs: [
        { name: "X", dims: ["m", "k"] },
        { name: "W", dims: ["n", "k"] },
      ],
      outputs: [{ name: "Y", dims: ["m", "n"] }],
    }));
    return this.rowChunked(s, { name: "X", t: x }, { name: "W", t: w }, n, into);
  }

  async matmul(a: Tensor, b: Tensor, into?: Float32Array): Promise<Tensor> {
    const { batch, m, k, n } = checkMatmul(a, b);
    const outShape = [...batch, m, n];
    if (numel(outShape) === 0 || k === 0) return new Tensor(checkOut(into, numel(outShape)).fill(0), outShape);
    const rank = a.shape.length;
    const s = await this.session(`matmul${rank}`, () => {
      const bd = sym("b", rank - 2);
      return {
        nodes: [{ opType: "MatMul", inputs: ["A", "B"], outputs: ["Y"] }],
        inputs: [
          { name: "A", dims: [...bd, "m", "k"] },
          { name: "B", dims: [...bd, "k", "n"] },
        ],
        outputs: [{ name: "Y", dims: [...bd, "m", "n"] }],
      };
    });
    if (rank === 2) return this.rowChunked(s, { name: "A", t: a }, { name: "B", t: b }, n, into);
    return this.run(s, { A: a, B: b }, outShape, checkOut(into, numel(outShape)));
  }

  /** c -= a b as one Gemm (alpha -1, beta 1, C = c), written over c. */
  async subtractProduct(c: Tensor, a: Tensor, b: Tensor): Promise<void> {
    const { m, k, n } = checkSubtractProduct(c, a, b);
    if (m === 0 || n === 0 || k === 0) return;
    const s = await this.session("subtractProduct", () => ({
      nodes: [{ opType: "Gemm", inputs: ["A", "B", "C"], outputs: ["Y"], floatAttributes: { alpha: -1, beta: 1 } }],
      inputs: [
        { name: "A", dims: ["m", "k"] },
        { name: "B", dims: ["k", "n"] },
        { name: "C", dims: ["m", "n"] },
      ],
      outputs: [{ name: "Y", dims: ["m", "n"] }],
    }));
    // Y is C's own array: the Gemm copies C into Y (here onto itself), then adds the product
    await this.run(s, { A: a, B: b, C: c }, [m, n], c.data);
  }

  /**
   * silu(g) * u = g * u / (1 + exp(-g)), as the reference writes it: element-wise nodes in one
   * session, through MLAS's vectorized exp (its Sigmoid kernel is an approximation that was off
   * by up to 8e-4 relative where silu is small; exp stays within float32 rounding).
   */
  async swiglu(gate: Tensor, up: Tensor, into?: Float32Array): Promise<Tensor> {
    const n = checkSwiglu(gate, up);
    const out = checkOut(into, n);
    if (n === 0) return new Tensor(out, gate.shape);
    const s = await this.session("swiglu", () => ({
      nodes: swigluNodes("G", "U", "Y"),
      inputs: [
        { name: "G", dims: ["n"] },
        { name: "U", dims: ["n"] },
        { name: "ONE", dims: [1] },
      ],
      outputs: [{ name: "Y", dims: ["n"] }],
    }));
    await this.run(s, { G: new Tensor(gate.data, [n]), U: new Tensor(up.data, [n]), ONE: new Tensor(ONE, [1]) }, [n], out);
    return new Tensor(out, gate.shape);
  }

  /**
   * Gate and up products, SwiGLU, the Gram product of the result and the down product as one
   * session run: the intermediate products never leave the runtime. Inputs taller than ROW_CHUNK
   * go through in row chunks (as `linear`). The Gram product of every chunk but the first (all of
   * them with `addGram`) is added to the sum so far inside the session (its Add node reads the sum
   * as input C), into scratch memory that is then copied over the sum.
   */
  async swigluExpert(x: Tensor, wGate: Tensor, wUp: Tensor, out: SwigluExpertOut): Promise<Tensor> {
    const { m, i } = checkSwigluExpert(x, wGate, wUp, out);
    const { act, gram, down } = out;
    const k = x.dim(1);
    if (m === 0 || i === 0 || k === 0) {
      if (!out.addGram) gram?.fill(0);
      down?.out.fill(0);
      return new Tensor(act.fill(0), [m, i]);
    }
    const h = down?.weight.dim(0) ?? 0;
    const sum = gram && (out.addGram || m > ROW_CHUNK) ? takeFloats(i * i) : null;
    try {
      for (let r0 = 0; r0 < m; r0 += ROW_CHUNK) {
        const r1 = Math.min(m, r0 + ROW_CHUNK);
        const adding = gram !== undefined && (r0 > 0 || out.addGram === true);
        const s = await this.swigluSession(gram !== undefined, down !== undefined, adding);
        const feeds: Record<string, ort.Tensor> = {
          X: new ort.Tensor("float32", x.data.subarray(r0 * k, r1 * k), [r1 - r0, k]),
          WG: new ort.Tensor("float32", wGate.data, [...wGate.shape]),
          WU: new ort.Tensor("float32", wUp.data, [...wUp.shape]),
          ONE: new ort.Tensor("float32", ONE, [1]),
        };
        const fetches: Record<string, ort.Tensor> = { A: new ort.Tensor("float32", act.subarray(r0 * i, r1 * i), [r1 - r0, i]) };
        if (gram) fetches.Y = new ort.Tensor("float32", adding ? (sum as Float32Array) : gram, [i, i]);
        if (adding) feeds.C = new ort.Tensor("float32", gram as Float32Array, [i, i]);
        if (down) {
          feeds.WD = new ort.Tensor("float32", down.weight.data, [h, i]);
          fetches.D = new ort.Tensor("float32", down.out.subarray(r0 * h, r1 * h), [r1 - r0, h]);
        }
        await native(() => s.run(feeds, fetches));
        if (adding) gram?.set(sum as Float32Array);
      }
    } finally {
      if (sum) giveBuffer(sum.buffer);
    }
    return new Tensor(act, [m, i]);
  }

  private swigluSession(withGram: boolean, withDown: boolean, addGram: boolean): Promise<ort.InferenceSession> {
    const gram = withGram ? (addGram ? "+gram+C" : "+gram") : "";
    return this.session(`swigluExpert${gram}${withDown ? "+down" : ""}`, () => ({
      nodes: [
        { opType: "Gemm", inputs: ["X", "WG"], outputs: ["G"], intAttributes: { transB: 1 } },
        { opType: "Gemm", inputs: ["X", "WU"], outputs: ["U"], intAttributes: { transB: 1 } },
        ...swigluNodes("G", "U", "A"),
        ...(withGram ? gramNodes("A", addGram ? "P" : "Y") : []),
        ...(withGram && addGram ? [{ opType: "Add", inputs: ["P", "C"], outputs: ["Y"] }] : []),
        ...(withDown ? [{ opType: "Gemm", inputs: ["A", "WD"], outputs: ["D"], intAttributes: { transB: 1 } }] : []),
      ],
      inputs: [
        { name: "X", dims: ["m", "k"] },
        { name: "WG", dims: ["i", "k"] },
        { name: "WU", dims: ["i", "k"] },
        { name: "ONE", dims: [1] },
        ...(withGram && addGram ? [{ name: "C", dims: ["i", "i"] }] : []),
        ...(withDown ? [{ name: "WD", dims: ["h", "i"] }] : []),
      ],
      outputs: [
        { name: "A", dims: ["m", "i"] },
        ...(withGram ? [{ name: "Y", dims: ["i", "i"] }] : []),
        ...(withDown ? [{ name: "D", dims: ["m", "h"] }] : []),
      ],
    }));
  }

  /**
   * RMSNorm over the last dimension, in float32 as PyTorch computes it (sum of squares, mean, eps,
   * square root, reciprocal, then the two products), vectorized on every intra-op thread.
   */
  async rmsNorm(x: Tensor, weight: Tensor, eps: number, into?: Float32Array): Promise<Tensor> {
    const n = checkRmsNorm(x, weight);
    const out = checkOut(into, x.size);
    if (x.size === 0) return new Tensor(out, x.shape);
    const s = await this.session("rmsNorm", () => ({
      nodes: [
        { opType: "ReduceSumSquare", inputs: ["X"], outputs: ["SS"], intListAttributes: { axes: [1] }, intAttributes: { keepdims: 1 } },
        { opType: "Div", inputs: ["SS", "N"], outputs: ["MS"] },
        { opType: "Add", inputs: ["MS", "EPS"], outputs: ["V"] },
        { opType: "Sqrt", inputs: ["V"], outputs: ["SD"] },
        { opType: "Reciprocal", inputs: ["SD"], outputs: ["R"] },
        { opType: "Mul", inputs: ["X", "R"], outputs: ["XN"] },
        { opType: "Mul", inputs: ["XN", "W"], outputs: ["Y"] },
      ],
      inputs: [
        { name: "X", dims: ["m", "n"] },
        { name: "W", dims: ["n"] },
        { name: "N", dims: [1] },
        { name: "EPS", dims: [1] },
      ],
      outputs: [{ name: "Y", dims: ["m", "n"] }],
    }));
    const feeds = {
      X: new Tensor(x.data, [x.size / n, n]),
      W: new Tensor(weight.data, [n]),
      N: new Tensor(new Float32Array([n]), [1]),
      EPS: new Tensor(new Float32Array([eps]), [1]),
    };
    await this.run(s, feeds, [x.size / n, n], out);
    return new Tensor(out, x.shape);
  }

  /** x * sigmoid(g) = x / (1 + exp(-g)), through MLAS's exp as `swiglu` (not its approximate Sigmoid). */
  async sigmoidGate(x: Tensor, gate: Tensor, into?: Float32Array): Promise<Tensor> {
    const n = checkSigmoidGate(x, gate);
    const out = checkOut(into, n);
    if (n === 0) return new Tensor(out, x.shape);
    const s = await this.session("sigmoidGate", () => ({
      nodes: [...sigmoidDenominatorNodes("G", "Y"), { opType: "Div", inputs: ["X", "Y_den"], outputs: ["Y"] }],
      inputs: [
        { name: "X", dims: ["n"] },
        { name: "G", dims: ["n"] },
        { name: "ONE", dims: [1] },
      ],
      outputs: [{ name: "Y", dims: ["n"] }],
    }));
    await this.run(s, { X: new Tensor(x.data, [n]), G: new Tensor(gate.data, [n]), ONE: new Tensor(ONE, [1]) }, [n], out);
    return new Tensor(out, x.shape);
  }

  /**
   * One attention head as session runs of Gemm for q k^T, the scale and mask, Softmax and MatMul
   * with v; long sequences in row chunks, so that each of the session's [rows, S] intermediate
   * arrays stays within ATTENTION_SCORES floats.
   */
  async attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: number, into?: Float32Array): Promise<Tensor> {
    const { m, s: keys, dv } = checkAttention(q, k, v, mask);
    const d = q.dim(1);
    const out = checkOut(into, m * dv);
    if (m === 0 || dv === 0) return new Tensor(out, [m, dv]);
    const s = await this.session("attention", () => ({
      nodes: [
        { opType: "Gemm", inputs: ["Q", "K"], outputs: ["QK"], intAttributes: { transB: 1 } },
        { opType: "Mul", inputs: ["QK", "SCALE"], outputs: ["SC"] },
        { opType: "Add", inputs: ["SC", "MASK"], outputs: ["L"] },
        { opType: "Softmax", inputs: ["L"], outputs: ["P"] },
        { opType: "MatMul", inputs: ["P", "V"], outputs: ["Y"] },
      ],
      inputs: [
        { name: "Q", dims: ["m", "d"] },
        { name: "K", dims: ["s", "d"] },
        { name: "V", dims: ["s", "dv"] },
        { name: "MASK", dims: ["m", "s"] },
        { name: "SCALE", dims: [1] },
      ],
      outputs: [{ name: "Y", dims: ["m", "dv"] }],
    }));
    const SCALE = new Tensor(new Float32Array([scale]), [1]);
    const rows = Math.max(1, Math.floor(ATTENTION_SCORES / keys));
    for (let r0 = 0; r0 < m; r0 += rows) {
      const r1 = Math.min(m, r0 + rows);
      const feeds = {
        Q: new Tensor(q.data.subarray(r0 * d, r1 * d), [r1 - r0, d]),
        K: k,
        V: v,
        MASK: new Tensor(mask.data.subarray(r0 * keys, r1 * keys), [r1 - r0, keys]),
        SCALE,
      };
      await this.run(s, feeds, [r1 - r0, dv], out.subarray(r0 * dv, r1 * dv));
    }
    return new Tensor(out, [m, dv]);
  }

  /** x^T x as an explicit transpose and a product (MLAS runs a transposed left operand slower). */
  async gram(x: Tensor, into?: Float32Array): Promise<Tensor> {
    const { m, k } = checkGram(x);
    const out = checkOut(into, k * k);
    if (m === 0 || k === 0) return new Tensor(out.fill(0), [k, k]);
    const s = await this.session("gram", () => ({
      nodes: gramNodes("X", "Y"),
      inputs: [{ name: "X", dims: ["m", "k"] }],
      outputs: [{ name: "Y", dims: ["k", "k"] }],
    }));
    return this.run(s, { X: x }, [k, k], out);
  }
}

/** Nodes of y = silu(g) * u = g * u / (1 + exp(-g)) (input ONE holds 1). */
function swigluNodes(g: string, u: string, y: string): NodeSpec[] {
  return [
    ...sigmoidDenominatorNodes(g, y),
    { opType: "Mul", inputs: [g, u], outputs: [`${y}_gu`] },
    { opType: "Div", inputs: [`${y}_gu`, `${y}_den`], outputs: [y] },
  ];
}

/** Nodes of `${y}_den` = 1 + exp(-g), the denominator of sigmoid(g) through MLAS's exp (input ONE holds 1). */
function sigmoidDenominatorNodes(g: string, y: string): NodeSpec[] {
  return [
    { opType: "Neg", inputs: [g], outputs: [`${y}_neg`] },
    { opType: "Exp", inputs: [`${y}_neg`], outputs: [`${y}_exp`] },
    { opType: "Add", inputs: [`${y}_exp`, "ONE"], outputs: [`${y}_den`] },
  ];
}

/** Nodes of y = x^T x. */
function gramNodes(x: string, y: string): NodeSpec[] {
  return [
    { opType: "Transpose", inputs: [x], outputs: [`${x}_t`] },
    { opType: "MatMul", inputs: [`${x}_t`, x], outputs: [y] },
  ];
}

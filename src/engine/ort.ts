import os from "node:os";
import * as ort from "onnxruntime-node";
import { Engine, checkGram, checkLinear, checkMatmul } from "./engine.js";
import { Tensor, numel } from "./tensor.js";
import { NodeSpec, ValueSpec, encodeSingleNodeModel } from "./onnx-proto.js";

/** Number of intra-op threads: MOECAL_THREADS, else every core. */
export function engineThreads(): number {
  const env = Number(process.env.MOECAL_THREADS);
  return Number.isInteger(env) && env > 0 ? env : os.availableParallelism();
}

interface OpSpec {
  node: NodeSpec;
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
      const { node, inputs, outputs } = spec();
      const model = encodeSingleNodeModel(node, inputs, outputs);
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

  private async run(session: ort.InferenceSession, feeds: Record<string, Tensor>, outShape: number[]): Promise<Tensor> {
    const out = new Float32Array(numel(outShape));
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = new ort.Tensor("float32", t.data, [...t.shape]);
    await session.run(ortFeeds, { Y: new ort.Tensor("float32", out, outShape) });
    return new Tensor(out, outShape);
  }

  async linear(x: Tensor, w: Tensor): Promise<Tensor> {
    const { m, n } = checkLinear(x, w);
    if (m === 0 || n === 0 || x.dim(1) === 0) return Tensor.zeros([m, n]);
    const s = await this.session("linear", () => ({
      node: { opType: "Gemm", inputs: ["X", "W"], outputs: ["Y"], intAttributes: { transB: 1 } },
      inputs: [
        { name: "X", dims: ["m", "k"] },
        { name: "W", dims: ["n", "k"] },
      ],
      outputs: [{ name: "Y", dims: ["m", "n"] }],
    }));
    return this.run(s, { X: x, W: w }, [m, n]);
  }

  async matmul(a: Tensor, b: Tensor): Promise<Tensor> {
    const { batch, m, k, n } = checkMatmul(a, b);
    const outShape = [...batch, m, n];
    if (numel(outShape) === 0 || k === 0) return Tensor.zeros(outShape);
    const rank = a.shape.length;
    const s = await this.session(`matmul${rank}`, () => {
      const bd = sym("b", rank - 2);
      return {
        node: { opType: "MatMul", inputs: ["A", "B"], outputs: ["Y"] },
        inputs: [
          { name: "A", dims: [...bd, "m", "k"] },
          { name: "B", dims: [...bd, "k", "n"] },
        ],
        outputs: [{ name: "Y", dims: [...bd, "m", "n"] }],
      };
    });
    return this.run(s, { A: a, B: b }, outShape);
  }

  async gram(x: Tensor): Promise<Tensor> {
    const { m, k } = checkGram(x);
    if (m === 0 || k === 0) return Tensor.zeros([k, k]);
    const s = await this.session("gram", () => ({
      node: { opType: "Gemm", inputs: ["X", "X"], outputs: ["Y"], intAttributes: { transA: 1 } },
      inputs: [{ name: "X", dims: ["m", "k"] }],
      outputs: [{ name: "Y", dims: ["k", "k"] }],
    }));
    return this.run(s, { X: x }, [k, k]);
  }
}

import { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { giveBuffer, takeFloats } from "../engine/scratch.js";
import { Linear } from "./layers.js";
import { Module } from "./module.js";
import type { MoeExpert } from "./moe.js";

/** SwiGLU MLP: down(silu(gate(x)) * up(x)), under Hugging Face's names gate_proj, up_proj, down_proj. */
export class SwiGluMLP extends Module<Tensor, Tensor> implements MoeExpert {
  readonly className: string = "SwiGluMLP";

  constructor(hidden: number, intermediate: number) {
    super();
    this.addModule("gate_proj", new Linear(hidden, intermediate));
    this.addModule("up_proj", new Linear(hidden, intermediate));
    this.addModule("down_proj", new Linear(intermediate, hidden));
  }

  get gate_proj(): Linear {
    return this.child("gate_proj");
  }
  get up_proj(): Linear {
    return this.child("up_proj");
  }
  get down_proj(): Linear {
    return this.child("down_proj");
  }
  get gate(): Linear {
    return this.gate_proj;
  }
  get up(): Linear {
    return this.up_proj;
  }
  get down(): Linear {
    return this.down_proj;
  }

  async forward(x: Tensor): Promise<Tensor> {
    return swigluForward(this, x);
  }
}

/**
 * down(silu(gate(x)) * up(x)) of any SwiGLU expert as one engine step when nothing hooks its
 * Linears (a hook must see its Linear called) and they have no bias.
 */
export async function swigluForward(e: MoeExpert, x: Tensor): Promise<Tensor> {
  const { gate, up, down } = e;
  if (gate.hookCount + up.hookCount + down.hookCount > 0 || gate.hasBias || up.hasBias || down.hasBias)
    return down.call(await getEngine().swiglu(await gate.call(x), await up.call(x)));
  const rows = x.size / gate.inFeatures;
  const out = new Float32Array(rows * down.outFeatures);
  // the activations stay inside this step: scratch memory
  const act = takeFloats(rows * gate.outFeatures);
  try {
    await getEngine().swigluExpert(x.reshape([rows, gate.inFeatures]), gate.weight, up.weight, { act, down: { weight: down.weight, out } });
  } finally {
    giveBuffer(act.buffer);
  }
  return new Tensor(out, [...x.shape.slice(0, -1), down.outFeatures]);
}

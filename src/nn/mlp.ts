import { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { giveBuffer, takeFloats } from "../engine/scratch.js";
import { Linear } from "./layers.js";
import { type AnyModule, Module } from "./module.js";
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

  forwardInto(x: Tensor, out: Float32Array): Promise<Tensor | null> {
    return plainSwigluInto(this, x, out);
  }
}

/**
 * A SwiGLU MLP whose Linears are watched, as one step that feeds what watches them instead of
 * calling them; null when something watching them needs the calls. Calibration's observers set it
 * (calibration/fast-observers.ts): what they watch, only they know.
 */
export type ObservedStep = (e: MoeExpert, x: Tensor) => Promise<Tensor | null>;

let observedStep: ObservedStep | null = null;

export function setObservedStep(step: ObservedStep): void {
  observedStep = step;
}

/**
 * down(silu(gate(x)) * up(x)) of any SwiGLU expert as one engine step when nothing hooks its
 * Linears (a hook must see its Linear called) and they have no bias, or when the observed step
 * can feed the hooks; else Linear by Linear.
 */
export async function swigluForward(e: MoeExpert, x: Tensor): Promise<Tensor> {
  const { gate, up, down } = e;
  if (plainLinears(e)) return oneStep(e, x, new Float32Array((x.size / gate.inFeatures) * down.outFeatures));
  const observed = observedStep ? await observedStep(e, x) : null;
  return observed ?? down.call(await getEngine().swiglu(await gate.call(x), await up.call(x)));
}

/** No hook on the Linears (a hook must see its Linear called) and no bias. */
function plainLinears({ gate, up, down }: MoeExpert): boolean {
  return gate.hookCount + up.hookCount + down.hookCount === 0 && !gate.hasBias && !up.hasBias && !down.hasBias;
}

/**
 * An expert module's output written into `out` (the caller's memory, e.g. scratch it consumes at
 * once), when nothing hooks the module or its Linears and they have no bias; null otherwise (the
 * caller then calls the module).
 */
export async function plainSwigluInto(e: MoeExpert & Pick<AnyModule, "hookCount">, x: Tensor, out: Float32Array): Promise<Tensor | null> {
  return e.hookCount === 0 && plainLinears(e) ? oneStep(e, x, out) : null;
}

/** down(silu(gate(x)) * up(x)) as one engine step, into `out`. */
async function oneStep({ gate, up, down }: MoeExpert, x: Tensor, out: Float32Array): Promise<Tensor> {
  const rows = x.size / gate.inFeatures;
  // the activations stay inside this step: scratch memory
  const act = takeFloats(rows * gate.outFeatures);
  try {
    await getEngine().swigluExpert(x.reshape([rows, gate.inFeatures]), gate.weight, up.weight, { act, down: { weight: down.weight, out } });
  } finally {
    giveBuffer(act.buffer);
  }
  return new Tensor(out, [...x.shape.slice(0, -1), down.outFeatures]);
}

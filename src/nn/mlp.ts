import type { Tensor } from "../engine/tensor.js";
import { swiglu } from "../engine/ops.js";
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
    const [g, u] = [await this.gate_proj.call(x), await this.up_proj.call(x)];
    return this.down_proj.call(swiglu(g, u));
  }
}

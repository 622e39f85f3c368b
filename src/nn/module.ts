import type { Tensor } from "../engine/tensor.js";
import { InternalError, UsageError, WeightMappingError } from "../errors.js";

/** Any module, whatever its input and output types (methods are bivariant in TypeScript). */
export type AnyModule = Module<unknown, unknown>;

export type ForwardPreHook<I> = (module: AnyModule, input: I) => I | void | Promise<I | void>;
export type ForwardHook<I, O> = (module: AnyModule, input: I, output: O) => O | void | Promise<O | void>;

type StoredPre = (module: AnyModule, input: unknown) => unknown;
type StoredPost = (module: AnyModule, input: unknown, output: unknown) => unknown;

/** A declared parameter: its expected shape, and its value once loaded. */
export interface Parameter {
  shape: number[];
  value: Tensor | null;
}

/**
 * A node of the module tree, as torch.nn.Module: named children, named parameters, forward
 * pre- and post-hooks. `call` runs hooks around `forward`; modules call their children with `call`.
 */
export abstract class Module<I = Tensor, O = Tensor> {
  /** The class name a registry matches on (`AfmoeMoE`, `Linear`, ...). */
  abstract readonly className: string;
  private readonly _children = new Map<string, AnyModule>();
  private readonly _params = new Map<string, Parameter>();
  private readonly preHooks = new Map<number, StoredPre>();
  private readonly postHooks = new Map<number, StoredPost>();
  private static nextHookId = 0;

  abstract forward(input: I): Promise<O>;

  async call(input: I): Promise<O> {
    const x = await this.runPreHooks(input);
    let y: O = await this.forward(x);
    for (const h of this.postHooks.values()) {
      const r = await h(this as AnyModule, x, y);
      if (r !== undefined) y = r as O;
    }
    return y;
  }

  /** The pre-hooks on `input`, as `call` runs them: the input forward is given. */
  protected async runPreHooks(input: I): Promise<I> {
    let x = input;
    for (const h of this.preHooks.values()) {
      const r = await h(this as AnyModule, x);
      if (r !== undefined) x = r as I;
    }
    return x;
  }

  /** Register a hook run before forward; it may return a replacement input. Returns its remover. */
  registerForwardPreHook(hook: ForwardPreHook<I>): () => void {
    const id = Module.nextHookId++;
    this.preHooks.set(id, hook as StoredPre);
    return () => void this.preHooks.delete(id);
  }

  /** Register a hook run after forward; it may return a replacement output. Returns its remover. */
  registerForwardHook(hook: ForwardHook<I, O>): () => void {
    const id = Module.nextHookId++;
    this.postHooks.set(id, hook as StoredPost);
    return () => void this.postHooks.delete(id);
  }

  get hookCount(): number {
    return this.preHooks.size + this.postHooks.size;
  }

  /** Forward hooks only: they see the output (and may keep it). */
  get postHookCount(): number {
    return this.postHooks.size;
  }

  protected addModule<M extends AnyModule>(name: string, module: M): M {
    if (name.includes(".") || name === "") throw new InternalError(`invalid submodule name "${name}"`);
    this._children.set(name, module);
    return module;
  }

  protected declareParam(name: string, shape: number[]): void {
    this._params.set(name, { shape, value: null });
  }

  /** Hold another module's Parameter object itself (shared, not copied). */
  protected adoptParam(name: string, param: Parameter): void {
    this._params.set(name, param);
  }

  /** The Parameter object (shape and value) of a direct parameter. */
  parameter(name: string): Parameter {
    const p = this._params.get(name);
    if (!p) throw new InternalError(`${this.className} has no parameter "${name}"`);
    return p;
  }

  /** A child by attribute name; typed by the caller. */
  child<M extends AnyModule>(name: string): M {
    const m = this._children.get(name);
    if (!m) throw new InternalError(`${this.className} has no submodule "${name}"`);
    return m as M;
  }

  hasChild(name: string): boolean {
    return this._children.has(name);
  }

  children(): [string, AnyModule][] {
    return [...this._children.entries()];
  }

  /** The loaded value of a direct parameter. */
  param(name: string): Tensor {
    const p = this._params.get(name);
    if (!p) throw new InternalError(`${this.className} has no parameter "${name}"`);
    if (!p.value) throw new WeightMappingError(`${this.className}: parameter "${name}" is not loaded`);
    return p.value;
  }

  hasParam(name: string): boolean {
    return this._params.has(name);
  }

  /** Every module with its dotted name, this one first (name = prefix). */
  namedModules(prefix = ""): [string, AnyModule][] {
    // depth-first, in declaration order, without recursion or spreading (trees of hundreds of
    // thousands of modules would overflow the call stack)
    const out: [string, AnyModule][] = [];
    const stack: [string, AnyModule][] = [[prefix, this as AnyModule]];
    while (stack.length) {
      const [name, m] = stack.pop() as [string, AnyModule];
      out.push([name, m]);
      const children = [...m._children];
      for (let i = children.length - 1; i >= 0; i--) {
        const [cn, c] = children[i] as [string, AnyModule];
        stack.push([name ? `${name}.${cn}` : cn, c]);
      }
    }
    return out;
  }

  /** Every declared parameter with its dotted name. */
  namedParameters(prefix = ""): [string, Parameter][] {
    const out: [string, Parameter][] = [];
    for (const [name, m] of this.namedModules(prefix)) {
      for (const [pn, p] of (m as Module<unknown, unknown>)._params) out.push([name ? `${name}.${pn}` : pn, p]);
    }
    return out;
  }

  getSubmodule(path: string): AnyModule {
    let m: AnyModule = this as AnyModule;
    if (path === "") return m;
    for (const part of path.split(".")) {
      const next = m._children.get(part);
      if (!next) throw new UsageError(`no submodule "${path}" (missing "${part}")`);
      m = next;
    }
    return m;
  }

  /** Replace the submodule at a dotted path; returns the module that was there. */
  setSubmodule(path: string, module: AnyModule): AnyModule {
    const dot = path.lastIndexOf(".");
    const parent = dot < 0 ? (this as AnyModule) : this.getSubmodule(path.slice(0, dot));
    const name = path.slice(dot + 1);
    const old = parent._children.get(name);
    if (!old) throw new UsageError(`no submodule "${path}" to replace`);
    parent._children.set(name, module);
    return old;
  }
}

/** An ordered list of modules named "0", "1", ... */
export class ModuleList<M extends AnyModule> extends Module<never, never> {
  readonly className = "ModuleList";

  constructor(modules: M[]) {
    super();
    for (const [i, m] of modules.entries()) this.addModule(String(i), m);
  }

  get length(): number {
    return this.children().length;
  }

  at(i: number): M {
    return this.child<M>(String(i));
  }

  items(): M[] {
    return this.children().map(([, m]) => m as M);
  }

  async forward(): Promise<never> {
    throw new InternalError("ModuleList has no forward");
  }
}

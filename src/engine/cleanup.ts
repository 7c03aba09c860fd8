/**
 * A stack of undo steps for one resource. `unwind()` runs them once, newest first, keeps
 * going past failures and returns every error; later calls return the same result.
 */
export class CleanupStack {
  private readonly steps: { name: string; fn: () => unknown | Promise<unknown> }[] = [];
  private unwinding: Promise<Error[]> | undefined;

  push(name: string, fn: () => unknown | Promise<unknown>): void {
    this.steps.push({ name, fn });
  }

  unwind(): Promise<Error[]> {
    this.unwinding ??= (async () => {
      const errors: Error[] = [];
      for (const step of this.steps.reverse()) {
        try {
          await step.fn();
        } catch (err) {
          errors.push(new Error(`cleanup step "${step.name}" failed: ${(err as Error).message}`, { cause: err }));
        }
      }
      return errors;
    })();
    return this.unwinding;
  }
}

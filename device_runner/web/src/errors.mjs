/** Errors a user can act on: one line, no stack trace shown (the CLI prints `mobiletl-train-js: error: ...`,
 * the page shows the message). Anything else is a bug and keeps its trace. */
export class RunnerError extends Error {
  constructor(message) {
    super(message);
    this.name = 'RunnerError';
  }
}

/** LogBudget: the cap per window, and the count of lines left out reported on the next one. */
import { describe, expect, it } from 'vitest';
import { LogBudget } from '../../../src/log/log-budget.js';

describe('LogBudget', () => {
  it('writes `lines` per window, counts the rest, and reports them on the next line written', () => {
    let now = 0;
    const b = new LogBudget(2, 1000, () => now);
    expect([b.take(), b.take(), b.take(), b.take()]).toEqual([0, 0, undefined, undefined]);
    now = 999;
    expect(b.take()).toBeUndefined();
    now = 1000;
    expect(b.take()).toBe(3);
    expect(b.take()).toBe(0);
    expect(b.take()).toBeUndefined();
    now = 5000;
    expect(b.take()).toBe(1);
  });
});

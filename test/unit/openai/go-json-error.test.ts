import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { goJsonUnmarshalError, quoteByte } from '../../../src/openai/go-json-error.js';
import { readRequest } from '../../../src/openai/request-body.js';

// Made by Go itself (test/fixtures/go-json/gen.go: json.Unmarshal into a
// map[string]any, go1.26): hand-picked bodies plus seeded mutations of valid ones.
const fixture = JSON.parse(
  readFileSync(new URL('../../fixtures/go-json/vectors.json', import.meta.url), 'utf8'),
) as { vectors: Array<{ body: string; error: string }> };

describe('goJsonUnmarshalError: Go encoding/json error texts', () => {
  it('the vectors cover valid bodies, syntax errors and type errors', () => {
    const errors = fixture.vectors.map((v) => v.error);
    expect(errors.filter((e) => e === '').length).toBeGreaterThan(50);
    expect(errors.filter((e) => e.startsWith('invalid character')).length).toBeGreaterThan(150);
    expect(errors).toContain('unexpected end of JSON input');
    expect(errors).toContain("invalid character '[' exceeded max depth");
    expect(errors.some((e) => e.startsWith('json: cannot unmarshal'))).toBe(true);
  });

  it('says what Go says for every vector', () => {
    const mismatches: string[] = [];
    for (const v of fixture.vectors) {
      const body = Buffer.from(v.body, 'base64');
      const got = goJsonUnmarshalError(body) ?? '';
      if (got !== v.error) {
        mismatches.push(
          `${JSON.stringify(body.toString('latin1').slice(0, 80))}: ${got} ≠ ${v.error}`,
        );
      }
    }
    expect(mismatches).toEqual([]);
  });

  it("matches the reference EPP's hermetic test text", () => {
    expect(goJsonUnmarshalError(Buffer.from('no healthy upstream'))).toBe(
      "invalid character 'o' in literal null (expecting 'u')",
    );
  });

  it("readRequest answers in Go's words, a leading BOM included (JSON.parse must not drop it)", () => {
    const bom = Buffer.from('\ufeff{"model":"m","input":"x"}');
    expect(() => readRequest(bom, 'responses')).toThrow(
      "error unmarshaling request bodyMap: invalid character 'ï' looking for beginning of value",
    );
    expect(() => readRequest(Buffer.from('[1]'), 'chat')).toThrow(
      'error unmarshaling request bodyMap: json: cannot unmarshal array into Go value of type map[string]interface {}',
    );
  });

  it('readRequest refuses exactly the vectors Go refuses, in its words (JSON.parse takes 10 001 levels)', () => {
    const mismatches: string[] = [];
    for (const v of fixture.vectors) {
      const body = Buffer.from(v.body, 'base64');
      let got = '';
      try {
        readRequest(body, undefined);
      } catch (e) {
        const err = e as { code: string; message: string };
        if (err.code === 'invalid_json') got = err.message;
      }
      const want = v.error === '' ? '' : `error unmarshaling request bodyMap: ${v.error}`;
      if (got !== want)
        mismatches.push(`${body.toString('latin1').slice(0, 60)}: ${got} ≠ ${want}`);
    }
    expect(mismatches).toEqual([]);
  });

  it('scans a large body whose error is at its end', () => {
    const big = Buffer.from(`{"model":"m","input":"${'x'.repeat(4 * 1024 * 1024)}"`);
    expect(goJsonUnmarshalError(big)).toBe('unexpected end of JSON input');
    const bad = Buffer.from(`{"model":"m","input":"${'x'.repeat(1024 * 1024)}\u0001"}`);
    expect(goJsonUnmarshalError(bad)).toBe("invalid character '\\x01' in string literal");
  });

  it("quotes bytes as Go's quoteChar does", () => {
    expect(quoteByte(0x27)).toBe("'\\''");
    expect(quoteByte(0x22)).toBe(`'"'`);
    expect(quoteByte(0x0a)).toBe("'\\n'");
    expect(quoteByte(0x01)).toBe("'\\x01'");
    expect(quoteByte(0x85)).toBe("'\\u0085'");
    expect(quoteByte(0xe9)).toBe("'é'");
  });
});

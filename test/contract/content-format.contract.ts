import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * Content-format contract: every backend's detection must equal vLLM 0.33.0's own
 * (`_detect_content_format` and `_detect_developer_role_support`, run from its source by
 * scripts/goldens/make_goldens.py) on goldens/content-format.json's corpus: edge cases written for
 * the detector (test/fixtures/chat/templates/content-format/) and each tokenizer's own template.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

interface ContentFormatGoldens {
  templates: Record<string, { content_format: 'string' | 'openai'; developer_role: boolean }>;
}

/** A corpus key is a template file, or `<dir>/tokenizer_config.json#chat_template`. */
export function templateSource(key: string): string {
  const [file, field] = key.split('#') as [string, string | undefined];
  const text = readFileSync(join(ROOT, file), 'utf8');
  return field === undefined
    ? text
    : ((JSON.parse(text) as Record<string, string>)[field] as string);
}

export function describeContentFormatGoldens(
  backend: string,
  detect: (source: string) => string,
  supportsDeveloperRole?: (source: string) => boolean,
): void {
  const goldens = JSON.parse(
    readFileSync(join(ROOT, 'test/fixtures/chat/goldens/content-format.json'), 'utf8'),
  ) as ContentFormatGoldens;
  const entries = Object.entries(goldens.templates);

  describe(`content format (${backend}) against vLLM 0.33.0`, () => {
    it('covers both formats', () => {
      const formats = new Set(entries.map(([, g]) => g.content_format));
      expect([...formats].sort()).toEqual(['openai', 'string']);
    });
    it.each(entries)('%s', (key, golden) => {
      const source = templateSource(key);
      expect(detect(source)).toBe(golden.content_format);
      if (supportsDeveloperRole) expect(supportsDeveloperRole(source)).toBe(golden.developer_role);
    });
  });
}

/**
 * The chat prompt format for tokenizers without a chat template (tiktoken encodings).
 *
 * EPP-INTERNAL: this is not what any model server renders. It only has to be the same in both
 * backends (and stable across releases), because all that depends on it is routing consistency:
 * the same conversation prefix must give the same token prefix. Both backends implement it from
 * this description:
 *
 *   for each message (after vLLM's normalisation, content flattened to a string):
 *       "<|im_start|>" + role + "\n" + content + "<|im_end|>\n"
 *   then, when add_generation_prompt (default true):
 *       "<|im_start|>assistant\n"
 *
 * - continue_final_message: the last message is written without its "<|im_end|>\n";
 * - tools, documents and chat_template_kwargs are ignored;
 * - the same errors as a template render: an empty `messages` and continue_final_message with
 *   add_generation_prompt (also when the latter is left at its default true) are
 *   KvEppError('template_error');
 * - the text is encoded as ordinary text: "<|im_start|>" etc. are NOT special tokens here
 *   (tiktoken encode_ordinary), and add_special_tokens adds nothing.
 *
 * Pure module: no `node:*` imports.
 */
import { KvEppError } from '../errors.js';
import type { ChatRequest } from './openai-request.js';

export function renderPlainChat(req: ChatRequest): string {
  const { conversation, addGenerationPrompt, continueFinalMessage } = req;
  if (conversation.length === 0) {
    throw new KvEppError('template_error', 'Cannot render an empty conversation');
  }
  if (continueFinalMessage && addGenerationPrompt) {
    throw new KvEppError(
      'template_error',
      'continue_final_message and add_generation_prompt are not compatible',
    );
  }
  let out = '';
  conversation.forEach((m, i) => {
    out += `<|im_start|>${String(m.get('role'))}\n${String(m.get('content') ?? '')}`;
    if (!(continueFinalMessage && i === conversation.length - 1)) out += '<|im_end|>\n';
  });
  if (addGenerationPrompt) out += '<|im_start|>assistant\n';
  return out;
}

export {
  JsTokenizer,
  type JsTokenizerOptions,
  loadJsTokenizer,
  TIKTOKEN_ENCODINGS,
} from './tokenizer.js';

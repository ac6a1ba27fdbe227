import { loadJsTokenizer } from '../../../src/tokenize/js/index.js';
import { describeTokenizerGoldens } from '../../contract/tokenizer.contract.js';

describeTokenizerGoldens('js', (source) => loadJsTokenizer(source));

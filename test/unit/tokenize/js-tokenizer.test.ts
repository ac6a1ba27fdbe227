import {
  detectContentFormat,
  supportsDeveloperRole,
} from '../../../src/tokenize/js/content-format.js';
import { loadJsTokenizer } from '../../../src/tokenize/js/index.js';
import { describeContentFormatGoldens } from '../../contract/content-format.contract.js';
import { describeTokenizerGoldens } from '../../contract/tokenizer.contract.js';

describeTokenizerGoldens('js', (source) => loadJsTokenizer(source));
describeContentFormatGoldens('js', detectContentFormat, supportsDeveloperRole);

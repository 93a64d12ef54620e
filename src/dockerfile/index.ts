/**
 * The Dockerfile frontend's public entry point: parse (AST and typed instructions), dump, lint, errors, plus the
 * shell word expansion and .dockerignore support. Import from here rather than from the individual modules.
 */
export * from './instructions.js';
export { parseAst, sourceLines, parseWords, type Node, type ParseOptions, type AstResult } from './parser.js';
export {
  parseDockerfile,
  instructionFromNode,
  parseMount,
  parseDevice,
  parseGoDuration,
  ramInBytes,
  csvFields,
  InstructionError,
  type ParsedDockerfile,
  type RunDevice,
} from './convert.js';
export { dumpAst, dumpNode, goQuote, goQuoteList } from './dump.js';
export {
  DirectiveParser,
  DirectiveError,
  detectSyntax,
  findDirective,
  type FoundDirective,
  parseCheckOptions,
  type CheckOptions,
  DIRECTIVE_NAMES,
} from './directives.js';
export { parseHeredoc, heredocsFromLine, chompHeredocContent } from './heredoc.js';
export { DockerfileError, isDockerfileError, type DockerfileErrorCode, type DockerfileErrorInit } from './errors.js';
export { suggest, levenshtein, withSuggestion } from './suggest.js';
export * from './shell.js';
export * from './dockerignore.js';
export {
  lintDockerfile,
  formatLintWarning,
  isValidImageReference,
  parsePlatform,
  RULES,
  type LintRule,
  type RuleName,
  type LintWarning,
  type LintOptions,
  type LintResult,
} from './lint.js';
export * from './args.js';
export * from './expand.js';
export * from './stages.js';

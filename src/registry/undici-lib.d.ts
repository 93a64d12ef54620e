// The undici modules src/registry/http.ts imports by path (undici's own types describe only the package entry).
declare module 'undici/lib/dispatcher/agent.js' {
  import type { Agent } from 'undici';
  const AgentClass: typeof Agent;
  export default AgentClass;
}
declare module 'undici/lib/dispatcher/dispatcher.js' {
  const DispatcherClass: { prototype: object };
  export default DispatcherClass;
}
declare module 'undici/lib/api/index.js' {
  const api: object;
  export default api;
}

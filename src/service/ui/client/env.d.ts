/** Style sheets are imported for esbuild, which bundles them into the CSS asset. */
declare module '*.css';

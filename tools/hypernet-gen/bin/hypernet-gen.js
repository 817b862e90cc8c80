#!/usr/bin/env node
// The `hypernet-gen` command. It exists before the build, so `npm ci` can link it (dist/ is built afterwards).
import '../dist/main.js';

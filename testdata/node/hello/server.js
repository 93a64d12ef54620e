'use strict';
const express = require('express');
const version = require('./version.js');

const app = express();
app.get('/', (_req, res) => res.type('text').send(`hello from kiln ${version} ${process.env.NODE_ENV} uid=${process.getuid()}\n`));
const port = Number(process.env.PORT || 8080);
app.listen(port, '127.0.0.1', () => console.log(`listening on ${port}`));

require('heapdump');

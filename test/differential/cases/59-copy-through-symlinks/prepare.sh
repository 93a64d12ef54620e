mkdir -p real/sub && echo x > real/sub/file && ln -s real link

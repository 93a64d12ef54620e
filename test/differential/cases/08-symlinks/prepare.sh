mkdir -p links/d
echo target > links/d/t
ln -s d/t links/rel
ln -s /etc/passwd links/abs-out
ln -s missing links/dangling
ln -s d links/dirlink

mkdir -p src/dir/sub
echo "file in archive" > src/dir/f.txt
echo "deeper" > src/dir/sub/g.txt
ln -s f.txt src/dir/link
ln src/dir/f.txt src/dir/hard
chmod 0600 src/dir/sub/g.txt
chmod 4750 src/dir/sub
tar --numeric-owner --owner=1234 --group=5678 -C src -cf archive.tar dir
gzip -9 -c archive.tar > archive.tar.gz
xz -c archive.tar > archive.tar.xz
bzip2 -c archive.tar > archive.tar.bz2
echo "plain gzip, not a tar" | gzip -c > notatar.gz
mkdir -p o/etc && echo owned > o/etc/owned.conf
tar --numeric-owner --owner=1000 --group=50 --mode=0640 -C o -cf owned.tar etc
echo single > single.txt
rm -rf src o

echo real > real.txt
ln -s real.txt link.txt
mkdir d
echo in-d > d/file
ln -s ../real.txt d/inner-link
ln -s /etc/passwd d/abs-link
ln -s d dlink

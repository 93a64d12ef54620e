mkdir -p app/x/y app/cache
echo a > app/a.txt
echo t > app/t.tmp
echo c > app/cache/c
echo xy > app/x/y/deep.txt
echo x > app/x/top.txt

i=0
while [ $i -lt 2000 ]; do
  d=tree/d$(printf %02d $((i % 40)))/s$((i % 7))
  mkdir -p "$d"
  echo "file $i" > "$d/f$i.txt"
  i=$((i+1))
done

# Paired on/off comparison (run r with accounting vs run r without): python3 paired.py runs.json
import json,sys,statistics as st
runs=json.load(open(sys.argv[1]))
cases=sorted({(r['file_mib'],r['users']) for r in runs})
for c in cases:
    on={r['run']:r for r in runs if (r['file_mib'],r['users'])==c and r['accounting']}
    off={r['run']:r for r in runs if (r['file_mib'],r['users'])==c and not r['accounting']}
    g=[1-on[k]['goodput_bytes_per_sec']/off[k]['goodput_bytes_per_sec'] for k in on if k in off]
    cp=[on[k]['cpu_s_per_gib']/off[k]['cpu_s_per_gib']-1 for k in on if k in off]
    print(c, 'pairs',len(g),'median paired tput cost %+.1f%%'%(100*st.median(g)), 'range %+.1f..%+.1f'%(100*min(g),100*max(g)), '| cpu %+.1f%%'%(100*st.median(cp)), 'range %+.1f..%+.1f'%(100*min(cp),100*max(cp)))
    print('   on cpu', [round(on[k]['cpu_s_per_gib'],3) for k in sorted(on)], 'off', [round(off[k]['cpu_s_per_gib'],3) for k in sorted(off)])
